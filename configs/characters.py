"""Characters in, no words: the comparison's CLIP with a character-level tokenizer and a recurrent text
tower (Merkx & Frank, "Learning semantic sentence representations from visually grounded language
without lexical knowledge").

  python -m vlmjax.train --config configs/characters.py --workdir workdirs/characters
  python -m vlmjax.train --config configs/characters.py:transformer --workdir workdirs/characters_transformer

The tokenizer has one piece per character of the captions (`tokenizer.model_type='char'`); the text
tower is a bidirectional GRU with attention pooling (`model.text.kind='gru'`, vlmjax/models/text_rnn.py),
':transformer' keeps the comparison's 2-layer transformer on the same characters. Besides zero-shot
and retrieval, `sentence_similarity` correlates caption-embedding similarity with how much two scenes
share. The paper's claim: sentence meaning is learnt from images without any prior word knowledge,
well enough to track similarity judgements. Results: docs/results.md.
"""
import os

from vlmjax.config import load_file

MAX_CHARS = 112  # the longest caption (four objects, sizes and the count prefix) is about 105 characters


def get_config(arg=None):
  if arg not in (None, "", "transformer"):
    raise ValueError(f"configs/characters.py: unknown argument '{arg}' (none, or 'transformer')")
  c = load_file(os.path.join(os.path.dirname(__file__), "clip.py"))
  c.tokenizer.model_type = "char"
  c.tokenizer.vocab_size = 64  # at most: the captions use about 30 characters
  c.input.max_text_len = MAX_CHARS
  if arg == "transformer":
    c.model.text = dict(c.model.text, max_len=MAX_CHARS)
  else:
    c.model.text = dict(kind="gru", width=256, depth=1, max_len=MAX_CHARS)
  c.evals.sentence_similarity = dict(type="sentence_similarity", split="test", num_pairs=2000)
  return c
