"""From raw pictures to a dataset: WD14 auto-tagging (``tagger``), sentence captions from
vision-language models (``captioner``, cleaned up by ``sentences``), the batch loop both
share (``batches``), bulk caption edits and the tag table (``tags``), the folder layout
(``prepare``), and the undo stack every caption-writing command records on first
(``files``). Only caption files are ever written; pictures are only read."""
