"""Video: the clips of vlmjax_shapes_video, X-CLIP's modules, the video-text loss and the zero-shot evaluator."""
import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmjax.data import pipeline, shapes, shapes_video
from vlmjax.data.sources import VideoClips
from vlmjax.models import layers
from vlmjax.models.video import PromptGenerator, VideoCLIP
from vlmjax.models.vit import FrameMessageBlock, ViT
from vlmjax.objectives.contrastive import clip_loss
from vlmjax.objectives.video import video_text_loss


@pytest.fixture(scope="module")
def tiny_video_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds_video")
  shapes_video.build(str(data_dir), "tiny")
  return str(data_dir)


# --- The data --------------------------------------------------------------------------------------


def _centroid(frame, rgb):
  """Where the pixels within 40 of `rgb` are, (x, y) in [0, 1]."""
  near = np.abs(frame.astype(int) - np.array(rgb)).max(axis=-1) < 40
  ys, xs = np.nonzero(near)
  return (xs.mean() + 0.5) / frame.shape[1], (ys.mean() + 0.5) / frame.shape[0]


@pytest.mark.parametrize("index", range(0, 24, 2))
def test_a_single_object_clip_moves_the_way_its_caption_and_label_say(index):
  clip = shapes_video.make_clip(0, "train", index, image_size=64, num_frames=6)
  again = shapes_video.make_clip(0, "train", index, image_size=64, num_frames=6)  # a pure function
  strip = clip.pop("image")
  np.testing.assert_array_equal(strip, again.pop("image"))
  assert clip == again
  frames = pipeline.filmstrip_frames(strip)
  assert frames.shape == (6, 64, 64, 3)
  (obj,) = clip["objects"]
  name = f"{obj['color']} {obj['shape']}"
  assert shapes_video.CLASS_NAMES[clip["label"]] == f"{name} moving {obj['direction']}"
  assert name in clip["caption"] and obj["direction"] in clip["caption"]
  (x0, y0), (x1, y1) = (_centroid(f, shapes.COLOR_RGB[obj["color"]]) for f in (frames[0], frames[-1]))
  dx, dy = shapes_video.DIRECTION_STEP[obj["direction"]]
  moved = np.array([x1 - x0, y1 - y0])
  assert np.dot(moved, [dx, dy]) > 0.2  # along the direction, by most of the travel
  assert abs(np.dot(moved, [dy, dx])) < 0.03  # and not across it


def test_negative_captions_change_only_the_directions():
  clip = shapes_video.make_clip(0, "validation", 5)
  assert len(clip["negative_captions"]) == 3 and clip["caption"] not in clip["negative_captions"]
  directions = r"(left|right|up|down)(wards)?"
  assert {re.sub(directions, "D", n) for n in clip["negative_captions"]} == {re.sub(directions, "D", clip["caption"])}
  for obj in clip["objects"]:  # each object moves every other way in exactly one negative
    said = [n for n in clip["negative_captions"] for d in shapes_video.DIRECTIONS
            if f"{obj['color']} {obj['shape']} {shapes_video.DIRECTION_PHRASES[d][0]}" in n
            or f"{obj['color']} {obj['shape']} {shapes_video.DIRECTION_PHRASES[d][1]}" in n]
    assert len(said) == 3


def test_held_out_pairs_never_move_and_multi_object_clips_have_no_label():
  for index in range(40):
    clip = shapes_video.make_clip(0, "test", index)
    assert not {(o["color"], o["shape"]) for o in clip["objects"]} & shapes.UNSEEN
    assert (clip["label"] >= 0) == (index % 2 == 0) == (clip["num_objects"] == 1)
  assert len(shapes_video.CLASS_NAMES) == 4 * (36 - len(shapes.UNSEEN))


def test_filmstrip_frames_round_trip_and_a_strip_that_is_not_whole_frames_is_an_error():
  frames = np.random.default_rng(0).integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
  np.testing.assert_array_equal(pipeline.filmstrip_frames(shapes_video.filmstrip(frames)), frames)
  with pytest.raises(ValueError, match="not a row of 8x8 frames"):
    pipeline.filmstrip_frames(np.zeros((8, 36, 3), np.uint8))


def test_a_clip_with_a_missing_frame_is_a_counted_bad_record():
  strip = shapes_video.filmstrip(np.zeros((4, 8, 8, 3), np.uint8))
  records = [{"image": strip, "caption": "a red circle moving left."},
             {"image": strip[:, :24], "caption": "a red circle moving left."}]
  clips = VideoClips(records, num_frames=4, frame_size=8)
  assert clips[0] is records[0]
  bad = clips[1]
  assert isinstance(bad, pipeline.BadRecord) and bad.reason == "corrupt_image"
  assert "not 4 frames of 8x8" in bad.detail and "missing frame" in bad.detail


def test_the_source_reads_the_built_clips(tiny_video_dir):
  from vlmjax.config import base_config
  from vlmjax.data import sources
  data = base_config().data
  data.name, data.data_dir, data.builder_config = "vlmjax_shapes_video", tiny_video_dir, "tiny"
  source = sources.make_source(data, "test")
  record = source[3]
  want = shapes_video.make_clip(0, "test", 3, image_size=16, num_frames=4)
  np.testing.assert_array_equal(np.asarray(pipeline.decode_image(record["image"])), want["image"])
  assert record["caption"] == want["caption"] and source.class_names == shapes_video.CLASS_NAMES


# --- The modules -----------------------------------------------------------------------------------


def _heads_attention(x, p, num_heads):
  """Self-attention in numpy with `layers.Attention`'s params: x [B, T, D] -> [B, T, D]."""
  q, k, v = (np.einsum("btd,dhk->bthk", x, p[n]["kernel"]) + p[n]["bias"] for n in ("query", "key", "value"))
  logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bhts,bshk->bthk", weights, v).reshape(*x.shape[:2], -1) @ \
      p["out"]["kernel"].reshape(-1, x.shape[-1]) + p["out"]["bias"]


def _layer_norm(x, p, eps=1e-6):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def test_frame_message_block_equals_messages_in_numpy_then_the_image_block():
  """Messages: mean token -> linear -> attention across the clip's frames (numpy); then the image
  block, with the block's own params, on the tokens with the message appended."""
  frames, clips, tokens, width = 3, 2, 5, 16
  x = jax.random.normal(jax.random.PRNGKey(0), (clips * frames, tokens, width))
  block = FrameMessageBlock(num_heads=2, mlp_dim=32, frames=frames)
  params = nn.meta.unbox(block.init(jax.random.PRNGKey(1), x))["params"]
  got = np.asarray(block.apply({"params": params}, x))

  p = jax.tree.map(np.asarray, params)
  xs = np.asarray(x)
  message = (xs.mean(axis=1) @ p["message_proj"]["kernel"] + p["message_proj"]["bias"]).reshape(clips, frames, width)
  message = message + _heads_attention(_layer_norm(message, p["message_norm"]), p["message_attn"], 2)
  image_params = {k: v for k, v in params.items() if not k.startswith("message")}
  with_message = np.concatenate([xs, message.reshape(clips * frames, 1, width)], axis=1)
  want = layers.Block(num_heads=2, mlp_dim=32).apply({"params": image_params}, with_message)[:, :tokens]
  np.testing.assert_allclose(got, want, atol=2e-5)
  # Frames of one clip inform each other, never another clip's.
  shifted = x.at[0].add(1.0)
  moved = np.abs(np.asarray(block.apply({"params": params}, shifted)) - got).max(axis=(1, 2))
  assert (moved[1:frames] > 1e-4).all() and (moved[frames:] < 1e-6).all()


def test_an_image_towers_params_are_the_video_towers_but_the_messages():
  images = jnp.zeros((4, 16, 16, 3))
  tower = dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=8)
  from flax import traverse_util
  shapes_of = lambda params: {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(nn.meta.unbox(params)).items()}
  image = shapes_of(jax.eval_shape(ViT(**tower).init, jax.random.PRNGKey(0), images))
  video = shapes_of(jax.eval_shape(ViT(**tower, frames=2).init, jax.random.PRNGKey(0), images))
  assert {k: v for k, v in video.items() if "/message_" not in k} == image
  assert {k.split("/")[-2] for k in video if "/message_" in k} == {"message_proj", "message_norm", "query", "key",
                                                                   "value", "out"}


def _video_model(**options):
  tower = dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8)
  return VideoCLIP(image={**tower, **options.pop("image", {})}, text=dict(width=32, depth=1, mlp_dim=64, num_heads=2,
                                                                          max_len=8),
                   embed_dim=16, vocab_size=32, **options)


def test_frame_averaging_cannot_tell_a_clip_from_its_reverse_and_x_clip_can():
  """Only the integration transformer knows frame order (its positions): messages, like X-CLIP's,
  are exchanged between frames as a set, so with frame averaging alone they cannot tell a clip
  from its reverse either."""
  videos = jax.random.uniform(jax.random.PRNGKey(0), (2, 4, 16, 16, 3), minval=-1, maxval=1)
  both = jnp.concatenate([videos, videos[:, ::-1]])  # the clips, then the same clips backwards
  texts = jnp.array([[1, 5, 6, 2, 0, 0, 0, 0]] * 4)
  for options, same in [(dict(), True), (dict(image=dict(frames=4)), True),
                        (dict(image=dict(frames=4), temporal=dict(num_frames=4, num_heads=2)), False)]:
    model = _video_model(**options)
    params = model.init(jax.random.PRNGKey(1), videos=both, texts=texts)["params"]
    embeds = model.apply({"params": params}, videos=both)["image_embeds"]
    assert np.allclose(embeds[:2], embeds[2:], atol=1e-6) == same, options


def test_a_prompted_text_depends_on_the_clip_only_and_alpha_zero_is_the_text():
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  texts = jax.random.normal(keys[0], (5, 16))
  tokens = jax.random.normal(keys[1], (3, 7, 16))
  generator = PromptGenerator(num_heads=2)
  params = nn.meta.unbox(generator.init(keys[2], texts, tokens))["params"]
  out = generator.apply({"params": params}, texts, tokens)
  assert out.shape == (3, 5, 16)
  np.testing.assert_allclose(generator.apply({"params": params}, texts[2:4], tokens), out[:, 2:4], atol=1e-5)
  assert not np.allclose(out[0], out[1])  # each clip its own prompts
  zero = {**params, "alpha": jnp.zeros_like(params["alpha"])}
  np.testing.assert_allclose(generator.apply({"params": zero}, texts, tokens), jnp.broadcast_to(texts, out.shape),
                             atol=1e-6)


def test_video_text_loss_with_negatives_equals_numpy_and_clip_negatives_without_prompts():
  from vlmjax.objectives.contrastive import clip_loss_with_negatives
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  l2 = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  videos, texts = l2(jax.random.normal(keys[0], (4, 8))), l2(jax.random.normal(keys[1], (4, 4, 8)))
  negatives = l2(jax.random.normal(keys[2], (4, 3, 8)))
  v, w, n = (np.asarray(x, np.float64) for x in (videos, texts, negatives))
  logits = np.exp(1.5) * np.einsum("id,ijd->ij", v, w)
  rows = np.concatenate([logits, np.exp(1.5) * np.einsum("id,ikd->ik", v, n)], axis=1)
  ce = lambda z: np.mean(np.log(np.exp(z).sum(1)) - np.diag(z))
  np.testing.assert_allclose(video_text_loss(videos, texts, 1.5, negatives), 0.5 * (ce(rows) + ce(logits.T)),
                             rtol=1e-5)
  np.testing.assert_allclose(video_text_loss(videos, texts[0], 1.5, negatives),
                             clip_loss_with_negatives(videos, texts[0], negatives, 1.5), rtol=1e-6)


def test_video_text_loss_equals_numpy_and_is_clip_loss_without_prompts():
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  l2 = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  videos, texts = l2(jax.random.normal(keys[0], (4, 8))), l2(jax.random.normal(keys[1], (4, 4, 8)))
  logits = np.exp(2.0) * np.einsum("id,ijd->ij", np.asarray(videos), np.asarray(texts))
  ce = lambda z: np.mean(np.log(np.exp(z).sum(1)) - np.diag(z))
  np.testing.assert_allclose(video_text_loss(videos, texts, 2.0), 0.5 * (ce(logits) + ce(logits.T)), rtol=1e-5)
  np.testing.assert_allclose(video_text_loss(videos, texts[0], 2.0), clip_loss(videos, texts[0], 2.0), rtol=1e-6)


# --- Training and evaluation -----------------------------------------------------------------------


def _video_config(tiny_video_dir, **overrides):
  from tests.conftest import tiny_config
  c = tiny_config(tiny_video_dir, **{"mesh": dict(data=1, fsdp=-1, tensor=1)})
  c.data.name = "vlmjax_shapes_video"
  c.input = dict(c.input, image_size=16, num_frames=4)
  c.model.name = "video_clip"
  c.model.image = dict(c.model.image, frames=4)
  c.model.temporal = dict(num_frames=4, num_heads=2)
  c.model.prompts = dict(num_heads=2)
  c.objectives = dict(video_text_negatives=dict(weight=1.0))
  c.total_steps = 12
  c.evals = dict(zeroshot=dict(type="video_zeroshot", split="test"))
  for key, value in overrides.items():
    from vlmjax.config import set_dotted
    set_dotted(c, key, value)
  return c


def test_x_clip_trains_sharded_on_8_devices_and_is_evaluated_zero_shot(tiny_video_dir, tmp_path):
  from vlmjax.train import train
  results = train(_video_config(tiny_video_dir), str(tmp_path / "run"))
  assert results["zeroshot/count"] == 32  # the even (single-object) clips of the 64 test clips
  for key in ("top1", "top5", "direction", "axis", "object"):
    assert 0.0 <= results[f"zeroshot/{key}"] <= 1.0
  assert results["zeroshot/axis"] >= results["zeroshot/direction"]  # a right direction has the right axis
  assert -1.0 <= results["zeroshot/opposite_text_cosine"] <= 1.0
  assert results["zeroshot/reverse_cosine"] < 1.0 - 1e-6  # the integration's positions see order
  losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "metrics.jsonl") if '"loss"' in line]
  assert losses[-1] < losses[0]


def test_video_config_errors_are_one_line(tiny_video_dir, tmp_path):
  from vlmjax.train import train
  with pytest.raises(ValueError, match="input.num_frames"):
    train(_video_config(tiny_video_dir, **{"input.num_frames": 0}), str(tmp_path / "a"))
  with pytest.raises(ValueError, match="model.image.frames is 3, but input.num_frames is 4"):
    train(_video_config(tiny_video_dir, **{"model.image.frames": 3}), str(tmp_path / "b"))
  assert not list((tmp_path / "b").glob("checkpoints/*"))
