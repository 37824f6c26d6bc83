"""The model zoo: importing this package registers every model by name."""
from vlmjax.models import close, decoder, dual_encoder, fusion, text_rnn, video, vlm  # noqa: F401
