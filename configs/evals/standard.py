"""The standard sets of the CLIP papers, read from a TFDS folder (nothing is downloaded).

  python -m vlmjax.evaluate --bundle B --suite configs/evals/standard.py --out OUT --data_dir ~/tensorflow_datasets

Zero-shot ImageNet-1k (CLIP's class names and 80 templates; `imagenet_simple`: the 7-template
subset), CIFAR-10 and CIFAR-100 (CLIP_benchmark's templates), a linear probe and 10-shot regression
on CIFAR-10 (L2 weight chosen on the last 5,000 training images), and COCO 5k-test retrieval (the
Karpathy split of `coco_captions`, 5 captions per image). Images: the shorter side resized to the
model's size and the centre cropped. A set that is not prepared in the folder is reported with the
command that prepares it, e.g. `tfds build cifar10 --data_dir D --file_format array_record`
(ImageNet needs its files downloaded by hand: `--manual_dir`).
"""
import ml_collections


def tfds_set(name: str, **fields):
  return dict(name="tfds", tfds_name=name, fields=fields or dict(image="image", label="label"))


def get_config(arg=None):
  del arg
  cifar10, cifar100, imagenet = tfds_set("cifar10"), tfds_set("cifar100"), tfds_set("imagenet2012")
  return ml_collections.ConfigDict(dict(
      imagenet=dict(type="zeroshot", split="validation", class_names="imagenet", prompts="imagenet", data=imagenet),
      imagenet_simple=dict(type="zeroshot", split="validation", class_names="imagenet", prompts="imagenet_simple",
                           data=imagenet),
      cifar10=dict(type="zeroshot", split="test", class_names="cifar10", prompts="cifar10", data=cifar10),
      cifar100=dict(type="zeroshot", split="test", class_names="cifar100", prompts="cifar100", data=cifar100),
      cifar10_linear_probe=dict(type="linear_probe", train_split="train[:45000]", validation_split="train[45000:]",
                                test_split="test", data=cifar10),
      cifar10_fewshot=dict(type="fewshot", train_split="train[:45000]", test_split="test", shots=(1, 5, 10),
                           data=cifar10),
      coco=dict(type="retrieval", split="test", num_examples=5000,
                data=tfds_set("coco_captions", image="image", caption="captions/text", captions="captions/text")),
  ))
