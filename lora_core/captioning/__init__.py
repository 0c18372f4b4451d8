"""From raw pictures to a dataset: WD14 auto-tagging (``tagger``), bulk caption edits and
the tag table (``tags``), the folder layout (``prepare``), and the undo stack every
caption-writing command records on first (``files``). Only caption files are ever written;
pictures are only read."""
