"""Training data, one job per module (all deterministic given the seed)::

    sources    a file / folder / saved or hub dataset  ->  documents ``(origin, record)``, streamed, or as a
               memory-mapped Arrow table (local files are converted once into ``datasets``' cache)
    encoding   record  ->  ``Encoded(input_ids, target_mask)``: plain text, prompt/response or the chat template;
               the completion-only mask is decided here and nowhere else
    packing    documents  ->  fixed-length ``PackedSequence``s whose position ids restart at every document, and
               ``collate`` into the trainer's tensors
    streaming  per-source held-out head and seeded, per-epoch shuffled stream; the weighted mixture; ``PackedStream``
               (one stage's stream, resumable at any ``StreamState``) and ``BatchStream`` (this rank's micro-batches)

A position in the stream is ``StreamState(draw, offset)``: the next packed sequence starts with the ``draw``-th
document of the mixture, at token ``offset``. Restoring it re-reads (but does not tokenize) the skipped documents, so
``--resume`` continues with exactly the sequences a straight run would have seen.
"""

from gendistill.distill.data.encoding import Encoded, Encoder, NothingToDistillError, check_messages
from gendistill.distill.data.packing import PackedSequence, StreamState, collate, pack_documents
from gendistill.distill.data.sources import FILE_SUFFIXES, Source, iter_file
from gendistill.distill.data.streaming import BatchStream, DocumentStream, PackedStream, SourceReader

__all__ = [
    "BatchStream",
    "DocumentStream",
    "Encoded",
    "Encoder",
    "FILE_SUFFIXES",
    "NothingToDistillError",
    "PackedSequence",
    "PackedStream",
    "Source",
    "SourceReader",
    "StreamState",
    "check_messages",
    "collate",
    "iter_file",
    "pack_documents",
]
