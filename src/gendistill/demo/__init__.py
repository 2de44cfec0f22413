"""``make demo`` / ``python -m gendistill.demo``: the project's point in one command.

Convert the embedded SmolLM2-135M-Instruct teacher into a hybrid student, distill it briefly with GenDistill on the
small sample shipped here (``chat.jsonl``), then evaluate the teacher, the undistilled student and the briefly
distilled student under both protocols (log-likelihood and generation) on the small task set shipped here
(``tasks/``), and print them side by side with the held-out perplexity and the protocol gap.

Nothing new is computed here: the student is built as ``gendistill distill`` builds it
(:func:`gendistill.distill.pipeline.build_student`), distilled by :func:`run_recipe`, evaluated by
:func:`gendistill.eval.runner.run_eval`; this module only chains them and labels the figures.
"""

from gendistill.demo.driver import DemoResult, run_demo

__all__ = ["DemoResult", "run_demo"]
