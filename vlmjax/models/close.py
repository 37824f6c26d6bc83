"""CLOSE (Gu et al. 2022): a captioning decoder trained on text alone, conditioned on a frozen dual
encoder's embedding.

The dual encoder (a CLIP run's towers, loaded by `init` and frozen) embeds the caption; the
L2-normalised text embedding plus Gaussian noise of standard deviation `noise_std` per dimension
becomes `prefix_tokens` decoder tokens through one linear map, and the decoder learns to write the
caption after them. At evaluation the image's embedding takes the text's place: no image is seen in
training, and the noise is what lets the decoder read an image embedding, which sits away from the
text embeddings it was trained on (the modality gap).

DPTR (Zhao et al. 2024) pre-trains the decoder the same way, with its Offline Randomized
Perturbation in place of the Gaussian noise: the text embedding plus `image_perturbation` times the
embedding of another image (the next example's in the batch, unrelated to the caption).
`train_code = 'image'` trains on the image's own embedding instead (the image–caption stage that
follows such a pre-training, or a VLM with a one-vector prefix).

The params are a dual encoder's (`image`, `text`, `image_proj`, `text_proj`, `logit_scale`,
`logit_bias`, so a CLIP run's checkpoint loads as it is), `prefix` and `decoder`.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from vlmjax import batch_spec, registry
from vlmjax.models import layers
from vlmjax.models.decoder import CAUSAL, PAD, Decoder, decoder_kwargs
from vlmjax.models.dual_encoder import DualEncoder


@registry.register("model", "close")
class Close(DualEncoder):
  """images [B, S, S, 3], texts [B, T], tokens [B, T'] (`prefix_tokens` IMAGE_TOKEN slots, then
  `BOS caption EOS`), attention_mask [B, T'] -> {`logits` [B, T', V], `prefix_code` [B, E]: the
  embedding the prefix was made from}.

  Training (`train=True`) reads the text's embedding, perturbed (`train_code='text'`), or the image's
  (`'image'`); otherwise the image's when images are given (the text's when only texts are).
  Generation steps after the prefill pass tokens alone."""
  decoder: dict = None
  prefix_tokens: int = 4
  noise_std: float = 0.0
  image_perturbation: float = 0.0  # DPTR: + this × another image's embedding, in training
  train_code: str = "text"  # the embedding training reads: 'text' or 'image'
  decode: bool = False

  batch_keys = {"images": "image", "texts": "text", "tokens": "tokens", "attention_mask": "attention_mask"}
  towers = {**DualEncoder.towers, "decoder": Decoder}

  def num_image_tokens(self, image_size: int) -> int:
    del image_size
    return self.prefix_tokens

  def batch_fields(self, input_config, prompt_len: int = 0) -> tuple:
    return (batch_spec.IMAGE, batch_spec.TEXT, *batch_spec.caption_fields(self.prefix_tokens, prompt_len))

  def setup(self):
    super().setup()
    width = decoder_kwargs(self.decoder)["width"]
    self.prefix = nn.Dense(self.prefix_tokens * width, dtype=self.dtype, name="prefix",
                           kernel_init=layers.kernel_init(("embed", "mlp")))
    self.language_model = Decoder(**decoder_kwargs(self.decoder), vocab_size=self.vocab_size, decode=self.decode,
                                  dtype=self.dtype, name="decoder")

  def __call__(self, images=None, texts=None, tokens=None, attention_mask=None, train: bool = False):
    out, prefix = {}, None
    if images is not None or texts is not None:
      if self.train_code not in ("text", "image"):
        raise ValueError(f"close: train_code '{self.train_code}' is not one of text, image")
      use_text = texts is not None and ((train and self.train_code == "text") or images is None)
      perturb = use_text and train and self.image_perturbation > 0 and images is not None
      both = self.is_initializing()  # init creates both towers' params
      encoded = super().__call__(images=images if both or perturb or not use_text else None,
                                 texts=texts if both or use_text else None)
      code = encoded["text_embeds"] if use_text else encoded["image_embeds"]
      if use_text and train and self.noise_std > 0:
        code = code + self.noise_std * jax.random.normal(self.make_rng("dropout"), code.shape, code.dtype)
      if perturb:
        code = code + self.image_perturbation * jnp.roll(encoded["image_embeds"], 1, axis=0)
      code = jax.lax.stop_gradient(code)  # the dual encoder is frozen
      out["prefix_code"] = code
      prefix = self.prefix(code.astype(self.dtype)).reshape(code.shape[0], self.prefix_tokens, -1)
    kinds = jnp.where(tokens != PAD, CAUSAL, PAD) if attention_mask is None else attention_mask
    out["logits"] = self.language_model(tokens, kinds, prefix, None, train)["logits"]
    return out
