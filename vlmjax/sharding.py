"""Device mesh from the config, logical axis rules, and helpers to place batches and state.

The mesh has three named axes: `data` (pure data parallel), `fsdp` (data parallel with parameters and
optimizer state sharded) and `tensor` (heads / MLP split). Parameters carry logical axis names; the
rules below map them onto mesh axes. The default rules give FSDP: the batch is split over
`data`+`fsdp`, parameters over `fsdp` on their `embed` dimension, and over `tensor` on heads/MLP.
"""
import contextlib
import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("proj", None),
    ("length", None),
    ("patch", None),
    ("layers", None),
    # Activations have names of their own (as in MaxText), so their placement is set apart from the
    # params': the batch over data×fsdp, heads / MLP / vocabulary over tensor.
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_vocab", "tensor"),
)


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, ...]:
  """{'data': -1, 'fsdp': 2, 'tensor': 1} -> (num_devices // 2, 2, 1); at most one axis may be -1."""
  sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError("mesh: at most one of data/fsdp/tensor may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
    raise ValueError(f"mesh: data×fsdp×tensor = {dict(zip(MESH_AXES, sizes))} does not divide "
                     f"the {num_devices} devices")
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh: data×fsdp×tensor = {math.prod(sizes)} but there are {num_devices} devices")
  return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  try:  # a topology-aware device order where the platform has one (TPU/GPU)
    device_array = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES)


def batch_axes_size(mesh: Mesh) -> int:
  """How many ways the batch is split: data × fsdp."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def rules_from_config(rules) -> tuple:
  """`config.sharding_rules` as flax rules; () = DEFAULT_RULES. Activation names the config does
  not map keep their default placement."""
  if not rules:
    return DEFAULT_RULES
  rules = tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes) for name, axes in rules)
  named = {name for name, _ in rules}
  return rules + tuple(r for r in DEFAULT_RULES if r[0].startswith("activation_") and r[0] not in named)


@contextlib.contextmanager
def use(mesh: Mesh, rules=DEFAULT_RULES):
  """The mesh and logical axis rules a jitted `model.apply` is traced under (train, eval, predict,
  generate): its activations get the sharding constraints their logical names map to."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def fit_spec(spec: P, shape, mesh: Mesh) -> P:
  """Drop mesh axes from dimensions they do not divide (e.g. a 3-head tensor on a 2-way `tensor`).

  Such a parameter is replicated along that axis rather than failing to compile.
  """
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = axes if isinstance(axes, tuple) else (axes,) if axes else ()
    size = math.prod(mesh.shape[a] for a in names)
    fitted.append(axes if size and dim % size == 0 else None)
  return P(*fitted)


def logical_shardings(abstract_tree, mesh: Mesh, rules):
  """A tree of boxed (logically partitioned) abstract values -> a tree of NamedShardings."""
  logical_specs = nn.get_partition_spec(abstract_tree)
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  values = nn.meta.unbox(abstract_tree)

  def shard(spec, value):
    # An empty node (optax's MaskedNode, the moments of a frozen param) stays an empty node: as a
    # NamedSharding leaf it would no longer match the state's structure.
    if not hasattr(value, "shape") and not jax.tree.leaves(value):
      return value
    return NamedSharding(mesh, fit_spec(spec, np.shape(value), mesh))

  return jax.tree.map(shard, mesh_specs, values, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def padded(x, size: int):
  """x [n, ...] with zero rows appended up to `size` (a fixed batch shape: one compilation)."""
  return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)]) if len(x) < size else x


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Per-process numpy batch -> global jax.Arrays sharded over data+fsdp on the leading dimension."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
