"""Class names and zero-shot prompt templates for the standard classification sets.

Every list is copied as its source ships it, in its source's order; index i of a class-name tuple is
integer label i of the TFDS dataset of the same name (imagenet2012, cifar10, cifar100).

- 'imagenet' class names: the 1000 names curated for CLIP, from open_clip (mlfoundations/open_clip,
  src/open_clip/zero_shot_metadata.py, IMAGENET_CLASSNAMES). They follow the ILSVRC-2012 label order,
  the WordNet ids sorted (0 'tench', 1 'goldfish'), which is how TFDS imagenet2012 numbers its labels.
  The list names two pairs of classes alike, kept as shipped: 'missile' (657 and 744) and
  'sunglasses' (836 and 837).
- 'imagenet' templates: OpenAI's 80 ImageNet prompts (OPENAI_IMAGENET_TEMPLATES in the same file),
  'imagenet_simple': its 7-prompt subset (SIMPLE_IMAGENET_TEMPLATES). There they are functions of
  the class name; here each is the equivalent format string with '{}' where the name goes.
- 'cifar10' / 'cifar100' templates: CLIP_benchmark's 18 prompts for each (LAION-AI/CLIP_benchmark,
  clip_benchmark/datasets/en_zeroshot_classification_templates.json), '{c}' written as '{}'.
- 'cifar10' / 'cifar100' class names: CLIP_benchmark names CIFAR classes by the label names the CIFAR
  archives carry; its first version spelled them out in clip_benchmark/datasets/cifar10.py and
  cifar100.py, with '_' written as ' ' ('aquarium fish'), and those lists are copied here. TFDS
  cifar10 / cifar100 name their integer labels from the same archives' label files (batches.meta.txt,
  fine_label_names.txt), line i for label i, so the order is TFDS's: cifar10 as listed, cifar100's
  100 fine labels in alphabetical order.

- 'shapes_broad': every colour × shape name the caption rules know (`vlmjax.data.text_negatives`), a
  superset of the built-in dataset's classes.

`class_names` and `templates` take a shipped set's name or a list of one's own, `read_class_names_file`
a text file with one name a line. Templates are format strings: `template.format(name)` is a prompt.
"""
import collections.abc
import os
import string

from vlmjax.data import text_negatives

# Data, copied from the sources above (see the module docstring).

_IMAGENET_CLASS_NAMES = (
  "tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray", "stingray", "rooster",
  "hen", "ostrich", "brambling", "goldfinch", "house finch", "junco", "indigo bunting", "American robin", "bulbul",
  "jay", "magpie", "chickadee", "American dipper", "kite (bird of prey)", "bald eagle", "vulture", "great grey owl",
  "fire salamander", "smooth newt", "newt", "spotted salamander", "axolotl", "American bullfrog", "tree frog",
  "tailed frog", "loggerhead sea turtle", "leatherback sea turtle", "mud turtle", "terrapin", "box turtle",
  "banded gecko", "green iguana", "Carolina anole", "desert grassland whiptail lizard", "agama",
  "frilled-necked lizard", "alligator lizard", "Gila monster", "European green lizard", "chameleon", "Komodo dragon",
  "Nile crocodile", "American alligator", "triceratops", "worm snake", "ring-necked snake", "eastern hog-nosed snake",
  "smooth green snake", "kingsnake", "garter snake", "water snake", "vine snake", "night snake", "boa constrictor",
  "African rock python", "Indian cobra", "green mamba", "sea snake", "Saharan horned viper",
  "eastern diamondback rattlesnake", "sidewinder rattlesnake", "trilobite", "harvestman", "scorpion",
  "yellow garden spider", "barn spider", "European garden spider", "southern black widow", "tarantula", "wolf spider",
  "tick", "centipede", "black grouse", "ptarmigan", "ruffed grouse", "prairie grouse", "peafowl", "quail", "partridge",
  "african grey parrot", "macaw", "sulphur-crested cockatoo", "lorikeet", "coucal", "bee eater", "hornbill",
  "hummingbird", "jacamar", "toucan", "duck", "red-breasted merganser", "goose", "black swan", "tusker", "echidna",
  "platypus", "wallaby", "koala", "wombat", "jellyfish", "sea anemone", "brain coral", "flatworm", "nematode", "conch",
  "snail", "slug", "sea slug", "chiton", "chambered nautilus", "Dungeness crab", "rock crab", "fiddler crab",
  "red king crab", "American lobster", "spiny lobster", "crayfish", "hermit crab", "isopod", "white stork",
  "black stork", "spoonbill", "flamingo", "little blue heron", "great egret", "bittern bird", "crane bird", "limpkin",
  "common gallinule", "American coot", "bustard", "ruddy turnstone", "dunlin", "common redshank", "dowitcher",
  "oystercatcher", "pelican", "king penguin", "albatross", "grey whale", "killer whale", "dugong", "sea lion",
  "Chihuahua", "Japanese Chin", "Maltese", "Pekingese", "Shih Tzu", "King Charles Spaniel", "Papillon", "toy terrier",
  "Rhodesian Ridgeback", "Afghan Hound", "Basset Hound", "Beagle", "Bloodhound", "Bluetick Coonhound",
  "Black and Tan Coonhound", "Treeing Walker Coonhound", "English foxhound", "Redbone Coonhound", "borzoi",
  "Irish Wolfhound", "Italian Greyhound", "Whippet", "Ibizan Hound", "Norwegian Elkhound", "Otterhound", "Saluki",
  "Scottish Deerhound", "Weimaraner", "Staffordshire Bull Terrier", "American Staffordshire Terrier",
  "Bedlington Terrier", "Border Terrier", "Kerry Blue Terrier", "Irish Terrier", "Norfolk Terrier", "Norwich Terrier",
  "Yorkshire Terrier", "Wire Fox Terrier", "Lakeland Terrier", "Sealyham Terrier", "Airedale Terrier", "Cairn Terrier",
  "Australian Terrier", "Dandie Dinmont Terrier", "Boston Terrier", "Miniature Schnauzer", "Giant Schnauzer",
  "Standard Schnauzer", "Scottish Terrier", "Tibetan Terrier", "Australian Silky Terrier",
  "Soft-coated Wheaten Terrier", "West Highland White Terrier", "Lhasa Apso", "Flat-Coated Retriever",
  "Curly-coated Retriever", "Golden Retriever", "Labrador Retriever", "Chesapeake Bay Retriever",
  "German Shorthaired Pointer", "Vizsla", "English Setter", "Irish Setter", "Gordon Setter", "Brittany dog",
  "Clumber Spaniel", "English Springer Spaniel", "Welsh Springer Spaniel", "Cocker Spaniel", "Sussex Spaniel",
  "Irish Water Spaniel", "Kuvasz", "Schipperke", "Groenendael dog", "Malinois", "Briard", "Australian Kelpie",
  "Komondor", "Old English Sheepdog", "Shetland Sheepdog", "collie", "Border Collie", "Bouvier des Flandres dog",
  "Rottweiler", "German Shepherd Dog", "Dobermann", "Miniature Pinscher", "Greater Swiss Mountain Dog",
  "Bernese Mountain Dog", "Appenzeller Sennenhund", "Entlebucher Sennenhund", "Boxer", "Bullmastiff",
  "Tibetan Mastiff", "French Bulldog", "Great Dane", "St. Bernard", "husky", "Alaskan Malamute", "Siberian Husky",
  "Dalmatian", "Affenpinscher", "Basenji", "pug", "Leonberger", "Newfoundland dog", "Great Pyrenees dog", "Samoyed",
  "Pomeranian", "Chow Chow", "Keeshond", "brussels griffon", "Pembroke Welsh Corgi", "Cardigan Welsh Corgi",
  "Toy Poodle", "Miniature Poodle", "Standard Poodle", "Mexican hairless dog (xoloitzcuintli)", "grey wolf",
  "Alaskan tundra wolf", "red wolf or maned wolf", "coyote", "dingo", "dhole", "African wild dog", "hyena", "red fox",
  "kit fox", "Arctic fox", "grey fox", "tabby cat", "tiger cat", "Persian cat", "Siamese cat", "Egyptian Mau",
  "cougar", "lynx", "leopard", "snow leopard", "jaguar", "lion", "tiger", "cheetah", "brown bear",
  "American black bear", "polar bear", "sloth bear", "mongoose", "meerkat", "tiger beetle", "ladybug", "ground beetle",
  "longhorn beetle", "leaf beetle", "dung beetle", "rhinoceros beetle", "weevil", "fly", "bee", "ant", "grasshopper",
  "cricket insect", "stick insect", "cockroach", "praying mantis", "cicada", "leafhopper", "lacewing", "dragonfly",
  "damselfly", "red admiral butterfly", "ringlet butterfly", "monarch butterfly", "small white butterfly",
  "sulphur butterfly", "gossamer-winged butterfly", "starfish", "sea urchin", "sea cucumber", "cottontail rabbit",
  "hare", "Angora rabbit", "hamster", "porcupine", "fox squirrel", "marmot", "beaver", "guinea pig",
  "common sorrel horse", "zebra", "pig", "wild boar", "warthog", "hippopotamus", "ox", "water buffalo", "bison",
  "ram (adult male sheep)", "bighorn sheep", "Alpine ibex", "hartebeest", "impala (antelope)", "gazelle",
  "arabian camel", "llama", "weasel", "mink", "European polecat", "black-footed ferret", "otter", "skunk", "badger",
  "armadillo", "three-toed sloth", "orangutan", "gorilla", "chimpanzee", "gibbon", "siamang", "guenon", "patas monkey",
  "baboon", "macaque", "langur", "black-and-white colobus", "proboscis monkey", "marmoset", "white-headed capuchin",
  "howler monkey", "titi monkey", "Geoffroy's spider monkey", "common squirrel monkey", "ring-tailed lemur", "indri",
  "Asian elephant", "African bush elephant", "red panda", "giant panda", "snoek fish", "eel", "silver salmon",
  "rock beauty fish", "clownfish", "sturgeon", "gar fish", "lionfish", "pufferfish", "abacus", "abaya",
  "academic gown", "accordion", "acoustic guitar", "aircraft carrier", "airliner", "airship", "altar", "ambulance",
  "amphibious vehicle", "analog clock", "apiary", "apron", "trash can", "assault rifle", "backpack", "bakery",
  "balance beam", "balloon", "ballpoint pen", "Band-Aid", "banjo", "baluster / handrail", "barbell", "barber chair",
  "barbershop", "barn", "barometer", "barrel", "wheelbarrow", "baseball", "basketball", "bassinet", "bassoon",
  "swimming cap", "bath towel", "bathtub", "station wagon", "lighthouse", "beaker", "military hat (bearskin or shako)",
  "beer bottle", "beer glass", "bell tower", "baby bib", "tandem bicycle", "bikini", "ring binder", "binoculars",
  "birdhouse", "boathouse", "bobsleigh", "bolo tie", "poke bonnet", "bookcase", "bookstore", "bottle cap",
  "hunting bow", "bow tie", "brass memorial plaque", "bra", "breakwater", "breastplate", "broom", "bucket", "buckle",
  "bulletproof vest", "high-speed train", "butcher shop", "taxicab", "cauldron", "candle", "cannon", "canoe",
  "can opener", "cardigan", "car mirror", "carousel", "tool kit", "cardboard box / carton", "car wheel",
  "automated teller machine", "cassette", "cassette player", "castle", "catamaran", "CD player", "cello",
  "mobile phone", "chain", "chain-link fence", "chain mail", "chainsaw", "storage chest", "chiffonier",
  "bell or wind chime", "china cabinet", "Christmas stocking", "church", "movie theater", "cleaver", "cliff dwelling",
  "cloak", "clogs", "cocktail shaker", "coffee mug", "coffeemaker", "spiral or coil", "combination lock",
  "computer keyboard", "candy store", "container ship", "convertible", "corkscrew", "cornet", "cowboy boot",
  "cowboy hat", "cradle", "construction crane", "crash helmet", "crate", "infant bed", "Crock Pot", "croquet ball",
  "crutch", "cuirass", "dam", "desk", "desktop computer", "rotary dial telephone", "diaper", "digital clock",
  "digital watch", "dining table", "dishcloth", "dishwasher", "disc brake", "dock", "dog sled", "dome", "doormat",
  "drilling rig", "drum", "drumstick", "dumbbell", "Dutch oven", "electric fan", "electric guitar",
  "electric locomotive", "entertainment center", "envelope", "espresso machine", "face powder", "feather boa",
  "filing cabinet", "fireboat", "fire truck", "fire screen", "flagpole", "flute", "folding chair", "football helmet",
  "forklift", "fountain", "fountain pen", "four-poster bed", "freight car", "French horn", "frying pan", "fur coat",
  "garbage truck", "gas mask or respirator", "gas pump", "goblet", "go-kart", "golf ball", "golf cart", "gondola",
  "gong", "gown", "grand piano", "greenhouse", "radiator grille", "grocery store", "guillotine", "hair clip",
  "hair spray", "half-track", "hammer", "hamper", "hair dryer", "hand-held computer", "handkerchief",
  "hard disk drive", "harmonica", "harp", "combine harvester", "hatchet", "holster", "home theater", "honeycomb",
  "hook", "hoop skirt", "gymnastic horizontal bar", "horse-drawn vehicle", "hourglass", "iPod", "clothes iron",
  "carved pumpkin", "jeans", "jeep", "T-shirt", "jigsaw puzzle", "rickshaw", "joystick", "kimono", "knee pad", "knot",
  "lab coat", "ladle", "lampshade", "laptop computer", "lawn mower", "lens cap", "letter opener", "library",
  "lifeboat", "lighter", "limousine", "ocean liner", "lipstick", "slip-on shoe", "lotion", "music speaker",
  "loupe magnifying glass", "sawmill", "magnetic compass", "messenger bag", "mailbox", "tights",
  "one-piece bathing suit", "manhole cover", "maraca", "marimba", "mask", "matchstick", "maypole", "maze",
  "measuring cup", "medicine cabinet", "megalith", "microphone", "microwave oven", "military uniform", "milk can",
  "minibus", "miniskirt", "minivan", "missile", "mitten", "mixing bowl", "mobile home", "ford model t", "modem",
  "monastery", "monitor", "moped", "mortar and pestle", "graduation cap", "mosque", "mosquito net", "vespa",
  "mountain bike", "tent", "computer mouse", "mousetrap", "moving van", "muzzle", "metal nail", "neck brace",
  "necklace", "baby pacifier", "notebook computer", "obelisk", "oboe", "ocarina", "odometer", "oil filter",
  "pipe organ", "oscilloscope", "overskirt", "bullock cart", "oxygen mask", "product packet / packaging", "paddle",
  "paddle wheel", "padlock", "paintbrush", "pajamas", "palace", "pan flute", "paper towel", "parachute",
  "parallel bars", "park bench", "parking meter", "railroad car", "patio", "payphone", "pedestal", "pencil case",
  "pencil sharpener", "perfume", "Petri dish", "photocopier", "plectrum", "Pickelhaube", "picket fence",
  "pickup truck", "pier", "piggy bank", "pill bottle", "pillow", "ping-pong ball", "pinwheel", "pirate ship",
  "drink pitcher", "block plane", "planetarium", "plastic bag", "plate rack", "farm plow", "plunger",
  "Polaroid camera", "pole", "police van", "poncho", "pool table", "soda bottle", "plant pot", "potter's wheel",
  "power drill", "prayer rug", "printer", "prison", "missile", "projector", "hockey puck", "punching bag", "purse",
  "quill", "quilt", "race car", "racket", "radiator", "radio", "radio telescope", "rain barrel",
  "recreational vehicle", "fishing casting reel", "reflex camera", "refrigerator", "remote control", "restaurant",
  "revolver", "rifle", "rocking chair", "rotisserie", "eraser", "rugby ball", "ruler measuring stick", "sneaker",
  "safe", "safety pin", "salt shaker", "sandal", "sarong", "saxophone", "scabbard", "weighing scale", "school bus",
  "schooner", "scoreboard", "CRT monitor", "screw", "screwdriver", "seat belt", "sewing machine", "shield",
  "shoe store", "shoji screen / room divider", "shopping basket", "shopping cart", "shovel", "shower cap",
  "shower curtain", "ski", "balaclava ski mask", "sleeping bag", "slide rule", "sliding door", "slot machine",
  "snorkel", "snowmobile", "snowplow", "soap dispenser", "soccer ball", "sock", "solar thermal collector", "sombrero",
  "soup bowl", "keyboard space bar", "space heater", "space shuttle", "spatula", "motorboat", "spider web", "spindle",
  "sports car", "spotlight", "stage", "steam locomotive", "through arch bridge", "steel drum", "stethoscope", "scarf",
  "stone wall", "stopwatch", "stove", "strainer", "tram", "stretcher", "couch", "stupa", "submarine", "suit",
  "sundial", "sunglasses", "sunglasses", "sunscreen", "suspension bridge", "mop", "sweatshirt", "swim trunks / shorts",
  "swing", "electrical switch", "syringe", "table lamp", "tank", "tape player", "teapot", "teddy bear", "television",
  "tennis ball", "thatched roof", "front curtain", "thimble", "threshing machine", "throne", "tile roof", "toaster",
  "tobacco shop", "toilet seat", "torch", "totem pole", "tow truck", "toy store", "tractor", "semi-trailer truck",
  "tray", "trench coat", "tricycle", "trimaran", "tripod", "triumphal arch", "trolleybus", "trombone", "hot tub",
  "turnstile", "typewriter keyboard", "umbrella", "unicycle", "upright piano", "vacuum cleaner", "vase",
  "vaulted or arched ceiling", "velvet fabric", "vending machine", "vestment", "viaduct", "violin", "volleyball",
  "waffle iron", "wall clock", "wallet", "wardrobe", "military aircraft", "sink", "washing machine", "water bottle",
  "water jug", "water tower", "whiskey jug", "whistle", "hair wig", "window screen", "window shade", "Windsor tie",
  "wine bottle", "airplane wing", "wok", "wooden spoon", "wool", "split-rail fence", "shipwreck", "sailboat", "yurt",
  "website", "comic book", "crossword", "traffic or street sign", "traffic light", "dust jacket", "menu", "plate",
  "guacamole", "consomme", "hot pot", "trifle", "ice cream", "popsicle", "baguette", "bagel", "pretzel",
  "cheeseburger", "hot dog", "mashed potatoes", "cabbage", "broccoli", "cauliflower", "zucchini", "spaghetti squash",
  "acorn squash", "butternut squash", "cucumber", "artichoke", "bell pepper", "cardoon", "mushroom",
  "Granny Smith apple", "strawberry", "orange", "lemon", "fig", "pineapple", "banana", "jackfruit",
  "cherimoya (custard apple)", "pomegranate", "hay", "carbonara", "chocolate syrup", "dough", "meatloaf", "pizza",
  "pot pie", "burrito", "red wine", "espresso", "tea cup", "eggnog", "mountain", "bubble", "cliff", "coral reef",
  "geyser", "lakeshore", "promontory", "sandbar", "beach", "valley", "volcano", "baseball player", "bridegroom",
  "scuba diver", "rapeseed", "daisy", "yellow lady's slipper", "corn", "acorn", "rose hip", "horse chestnut seed",
  "coral fungus", "agaric", "gyromitra", "stinkhorn mushroom", "earth star fungus", "hen of the woods mushroom",
  "bolete", "corn cob", "toilet paper",
)


_IMAGENET_TEMPLATES = (
  "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
  "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
  "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
  "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
  "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
  "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.",
  "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.", "a plastic {}.",
  "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
  "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.",
  "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.", "the {} in a video game.",
  "a sketch of a {}.", "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.", "the toy {}.",
  "a rendition of the {}.", "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
  "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.",
  "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
  "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.",
  "a photo of the small {}.", "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
  "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
  "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
  "a photo of a small {}.", "a tattoo of the {}.",
)


_IMAGENET_SIMPLE_TEMPLATES = (
  "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.", "a {} in a video game.",
  "art of the {}.", "a photo of the small {}.",
)


_CIFAR10_CLASS_NAMES = (
  "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


_CIFAR100_CLASS_NAMES = (
  "apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
  "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
  "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest",
  "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn mower", "leopard", "lion", "lizard",
  "lobster", "man", "maple tree", "motorcycle", "mountain", "mouse", "mushroom", "oak tree", "orange", "orchid",
  "otter", "palm tree", "pear", "pickup truck", "pine tree", "plain", "plate", "poppy", "porcupine", "possum",
  "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper",
  "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet pepper", "table", "tank", "telephone",
  "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow tree", "wolf",
  "woman", "worm",
)


_CIFAR_TEMPLATES = (
  "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.", "a low contrast photo of a {}.",
  "a high contrast photo of a {}.", "a bad photo of a {}.", "a good photo of a {}.", "a photo of a small {}.",
  "a photo of a big {}.", "a photo of the {}.", "a blurry photo of the {}.", "a black and white photo of the {}.",
  "a low contrast photo of the {}.", "a high contrast photo of the {}.", "a bad photo of the {}.",
  "a good photo of the {}.", "a photo of the small {}.", "a photo of the big {}.",
)


CLASS_NAMES: dict[str, tuple[str, ...]] = {
  "imagenet": _IMAGENET_CLASS_NAMES,  # 1000
  "cifar10": _CIFAR10_CLASS_NAMES,  # 10
  "cifar100": _CIFAR100_CLASS_NAMES,  # 100
  # Every colour × shape the caption rules know (110): the built-in dataset's 36 classes and 74 that
  # it never draws, an open vocabulary for label-free training (S3A, `python -m vlmjax.pseudo_label`).
  "shapes_broad": tuple(f"{c} {s}" for s in text_negatives.SHAPES for c in text_negatives.COLOURS),
}
"""Shipped class names by set: a tuple of C names, index i naming integer label i."""

TEMPLATES: dict[str, tuple[str, ...]] = {
  "imagenet": _IMAGENET_TEMPLATES,  # 80
  "imagenet_simple": _IMAGENET_SIMPLE_TEMPLATES,  # 7
  "cifar10": _CIFAR_TEMPLATES,  # 18
  "cifar100": _CIFAR_TEMPLATES,  # 18, the same as cifar10's
}
"""Shipped prompt templates by set: a tuple of format strings, each with one '{}' for the class name."""


def _known(table: dict) -> str:
  return ", ".join(sorted(table))


def _shipped(value, table: dict, what: str):
  """Returns table[value] for a set name, None for a sequence; raises for anything else."""
  if isinstance(value, str):
    if value not in table:
      raise ValueError(f"{what}: unknown set {value!r}; known sets: {_known(table)} "
                       f"(or pass a list of your own)")
    return table[value]
  if not isinstance(value, collections.abc.Sequence) or isinstance(value, (bytes, bytearray)):
    raise TypeError(f"{what}: expected a set name or a list of strings, got {type(value).__name__} {value!r}")
  return None


def _unique_strings(value, what: str, item: str) -> tuple[str, ...]:
  """value as a tuple of non-blank strings, none repeated; raises naming the first one at fault."""
  out = tuple(value)
  if not out:
    raise ValueError(f"{what}: the list is empty")
  seen = {}
  for i, entry in enumerate(out):
    if not isinstance(entry, str):
      raise TypeError(f"{what}: {item} {i} is {type(entry).__name__} {entry!r}, not a string")
    if not entry.strip():
      raise ValueError(f"{what}: {item} {i} is blank ({entry!r})")
    if entry in seen:
      raise ValueError(f"{what}: duplicate {item} {entry!r} (at {seen[entry]} and {i})")
    seen[entry] = i
  return out


def class_names(value) -> tuple[str, ...]:
  """The class names `value` stands for: a tuple of C strings, index i naming integer label i.

  value: the name of a shipped set (a key of CLASS_NAMES: 'imagenet', 'cifar10', 'cifar100'),
    returned as shipped; or a sequence of class names (list, tuple), returned as a tuple in the same
    order after checking it is non-empty, every entry a non-blank string, none repeated.
  Raises ValueError in one line naming the value at fault: an unknown set name (with the known sets),
  an empty sequence, a blank name, a duplicate name (with both positions). TypeError for a value
  that is neither a string nor a sequence, or an entry that is not a string.
  A shipped set is not re-checked: CLIP's ImageNet names repeat two (see the module docstring), so
  pass 'imagenet' by name rather than as a list.
  """
  shipped = _shipped(value, CLASS_NAMES, "class_names")
  return shipped if shipped is not None else _unique_strings(value, "class_names", "class name")


def _check_template(template: str, i: int) -> None:
  """Raises ValueError unless template has exactly one replacement field, a bare '{}'."""
  try:
    fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
  except ValueError as e:  # e.g. a lone '{' or '}'
    raise ValueError(f"templates: template {i} {template!r} is not a format string ({e})") from None
  if fields != [("", "", None)]:
    raise ValueError(f"templates: template {i} {template!r} must contain exactly one '{{}}' where the class "
                     f"name goes (found {len(fields)} replacement field(s))")


def templates(value) -> tuple[str, ...]:
  """The prompt templates `value` stands for: a tuple of T format strings, each with one '{}'.

  value: the name of a shipped set (a key of TEMPLATES: 'imagenet' (80), 'imagenet_simple' (7),
    'cifar10', 'cifar100' (18 each)), returned as shipped; or a sequence of templates, returned as a
    tuple in the same order after checking it is non-empty, none repeated, and each template holds
    exactly one replacement field, a bare '{}' (literal braces are written '{{' and '}}').
  `template.format(class_name)` gives a prompt.
  Raises ValueError in one line naming the value at fault: an unknown set name (with the known sets),
  an empty sequence, a blank or duplicate template, a template without exactly one '{}'. TypeError
  for a value that is neither a string nor a sequence, or an entry that is not a string.
  """
  shipped = _shipped(value, TEMPLATES, "templates")
  if shipped is not None:
    return shipped
  out = _unique_strings(value, "templates", "template")
  for i, template in enumerate(out):
    _check_template(template, i)
  return out


def read_class_names_file(path: str | os.PathLike) -> tuple[str, ...]:
  """Class names from a UTF-8 text file, one a line: a tuple of C strings, line order kept.

  Each line is stripped of surrounding whitespace; blank lines are skipped, so the i-th non-blank
  line names integer label i.
  Raises FileNotFoundError (one line naming the file) when path is missing or not a file; ValueError
  (one line naming the file) when it is not UTF-8 text, holds no names, or names a class twice (with
  both line numbers, counted from 1).
  """
  shown = os.fspath(path)
  if not os.path.exists(shown):
    raise FileNotFoundError(f"class names file '{shown}' does not exist")
  if not os.path.isfile(shown):
    raise FileNotFoundError(f"class names file '{shown}' is not a file")
  try:
    with open(shown, encoding="utf-8-sig") as f:
      lines = f.read().splitlines()
  except UnicodeDecodeError as e:
    raise ValueError(f"class names file '{shown}' is not UTF-8 text ({e.reason} at byte {e.start})") from None
  names, seen = [], {}
  for number, line in enumerate(lines, start=1):
    name = line.strip()
    if not name:
      continue
    if name in seen:
      raise ValueError(f"class names file '{shown}': line {number} repeats class name {name!r} "
                       f"(first on line {seen[name]})")
    seen[name] = number
    names.append(name)
  if not names:
    raise ValueError(f"class names file '{shown}' holds no class names (one a line expected)")
  return tuple(names)


DESCRIPTION_SIZES = ("small", "large")
DESCRIPTION_PLACES = ("on the left", "on the right", "at the top", "at the bottom", "in the center",
                      "in the top left", "in the top right", "in the bottom left", "in the bottom right")


def class_descriptions(class_name: str) -> list[str]:
  """Descriptions of an object of `class_name` with the details a class name leaves out: its size,
  its place, or both ('a large red circle in the top left'): 1 + 2 + 9 + 18 = 30 per class. GIST's
  descriptions to match images to, and zero-shot's `prompts='descriptions'` (GRAIN's evaluation)."""
  article = lambda word: "an" if word[0] in "aeiou" else "a"
  out = [f"{article(class_name)} {class_name}"]
  out += [f"a {size} {class_name}" for size in DESCRIPTION_SIZES]
  out += [f"{article(class_name)} {class_name} {place}" for place in DESCRIPTION_PLACES]
  out += [f"a {size} {class_name} {place}" for size in DESCRIPTION_SIZES for place in DESCRIPTION_PLACES]
  return out
