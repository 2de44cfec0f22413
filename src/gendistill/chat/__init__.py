"""``gendistill chat``: one chat-templated prompt answered by the teacher and each student, side by side
(:mod:`gendistill.chat.cli`)."""
