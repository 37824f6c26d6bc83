"""Shipped class names and prompt templates: counts, known entries, every template formats; the
checks on one's own lists and on class-name files."""
import pytest

from vlmjax.evals import classes


def test_counts():
  assert {k: len(v) for k, v in classes.CLASS_NAMES.items()} == {"imagenet": 1000, "cifar10": 10, "cifar100": 100,
                                                                 "shapes_broad": 110}
  from vlmjax.data import shapes
  assert set(shapes.CLASS_NAMES) < set(classes.class_names("shapes_broad"))  # the built-in classes and more
  assert {k: len(v) for k, v in classes.TEMPLATES.items()} == {
    "imagenet": 80, "imagenet_simple": 7, "cifar10": 18, "cifar100": 18}
  assert all(isinstance(v, tuple) and all(isinstance(s, str) for s in v)
             for table in (classes.CLASS_NAMES, classes.TEMPLATES) for v in table.values())


def test_known_entries():
  imagenet = classes.class_names("imagenet")
  assert imagenet[:3] == ("tench", "goldfish", "great white shark")
  assert imagenet[-1] == "toilet paper"
  # CLIP's list names two pairs alike, kept as shipped.
  assert [i for i, n in enumerate(imagenet) if n == "missile"] == [657, 744]
  assert [i for i, n in enumerate(imagenet) if n == "sunglasses"] == [836, 837]
  assert len(set(imagenet)) == 998
  assert classes.class_names("cifar10") == (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
  cifar100 = classes.class_names("cifar100")
  assert cifar100[:2] == ("apple", "aquarium fish") and cifar100[-1] == "worm"
  assert list(cifar100) == sorted(cifar100) and len(set(cifar100)) == 100
  assert classes.templates("imagenet")[0] == "a bad photo of a {}."
  assert classes.templates("imagenet")[-1] == "a tattoo of the {}."
  assert classes.templates("imagenet_simple") == (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.")
  assert set(classes.templates("imagenet_simple")) <= set(classes.templates("imagenet"))
  assert classes.templates("cifar10")[0] == "a photo of a {}."
  assert classes.templates("cifar100")[-1] == "a photo of the big {}."


def test_every_shipped_template_formats():
  for key, shipped in classes.TEMPLATES.items():
    assert classes.templates(list(shipped)) == shipped, key  # each passes the checks on one's own lists
    assert len(set(shipped)) == len(shipped), key
    for template in shipped:
      prompt = template.format("zebra")
      assert "zebra" in prompt and "{" not in prompt and "}" not in prompt, (key, template)


def test_own_lists_come_back_as_tuples():
  assert classes.class_names(["cat", "dog"]) == ("cat", "dog")
  assert classes.templates(("a {}.", "braces {{kept}} around {}")) == ("a {}.", "braces {{kept}} around {}")


@pytest.mark.parametrize("fn,table", [(classes.class_names, "imagenet"), (classes.templates, "imagenet_simple")])
def test_unknown_set_names_the_value_and_the_known_sets(fn, table):
  with pytest.raises(ValueError, match="unknown set 'imagenet1k'") as e:
    fn("imagenet1k")
  assert table in str(e.value) and "cifar100" in str(e.value) and "\n" not in str(e.value)


def test_bad_class_name_lists():
  with pytest.raises(ValueError, match="duplicate class name 'cat' \\(at 0 and 2\\)"):
    classes.class_names(["cat", "dog", "cat"])
  with pytest.raises(ValueError, match="empty"):
    classes.class_names([])
  with pytest.raises(ValueError, match="blank"):
    classes.class_names(["cat", "  "])
  with pytest.raises(TypeError, match="not a string"):
    classes.class_names(["cat", 3])
  with pytest.raises(TypeError, match="set name or a list"):
    classes.class_names({"cat", "dog"})


def test_bad_template_lists():
  with pytest.raises(ValueError, match="duplicate template 'a {}.'"):
    classes.templates(["a {}.", "the {}.", "a {}."])
  with pytest.raises(ValueError, match="empty"):
    classes.templates(())
  for bad in ("a photo.", "a {} and a {}.", "a {name}.", "a {0}.", "a {:>5}.", "a {{}}."):
    with pytest.raises(ValueError, match="exactly one") as e:
      classes.templates(["a {}.", bad])
    assert repr(bad) in str(e.value)
  with pytest.raises(ValueError, match="not a format string"):
    classes.templates(["a {}. }"])


def test_read_class_names_file(tmp_path):
  path = tmp_path / "names.txt"
  path.write_text("  cat \n\ndog\n\n  \nhot dog\n", encoding="utf-8")
  assert classes.read_class_names_file(path) == ("cat", "dog", "hot dog")
  assert classes.read_class_names_file(str(path)) == ("cat", "dog", "hot dog")
  path.write_text("cat\ndog\n\ncat\n", encoding="utf-8")
  with pytest.raises(ValueError, match="line 4 repeats class name 'cat' \\(first on line 1\\)") as e:
    classes.read_class_names_file(path)
  assert str(path) in str(e.value) and "\n" not in str(e.value)
  path.write_text("\n  \n", encoding="utf-8")
  with pytest.raises(ValueError, match="no class names"):
    classes.read_class_names_file(path)
  path.write_bytes(b"cat\n\xff\xfe\n")
  with pytest.raises(ValueError, match="not UTF-8"):
    classes.read_class_names_file(path)
  with pytest.raises(FileNotFoundError, match="missing.txt' does not exist"):
    classes.read_class_names_file(tmp_path / "missing.txt")
  with pytest.raises(FileNotFoundError, match="is not a file"):
    classes.read_class_names_file(tmp_path)
