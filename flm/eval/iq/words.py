"""Word lists the IQ item generators draw from: common, short, single-token-ish English words."""

from __future__ import annotations

# pattern mining and string tasks: short concrete nouns
NOUNS = (
    "apple bag ball bed bell bird boat book box bread cake car cat chair clock cloud coat cup desk dog door "
    "duck egg fan fish flag fork frog game gate hat horse house ice jar key kite lamp leaf lion map milk "
    "moon nest note pen pig pipe rain ring road rock rose salt sand ship shoe sock sun table tent tree van "
    "vase wall watch wind wolf yarn"
).split()

ADJECTIVES = "big small red blue green old new fast slow warm cold tall short bright dark soft".split()

VERBS_PAST = "saw found liked moved painted cleaned opened carried bought sold washed dropped".split()

PEOPLE = "Mary John Sandra Daniel Emma Peter Lucy Tom Anna Paul Kate Mike".split()

PLACES = "kitchen garden office bedroom bathroom hallway cellar garage attic library park school".split()

MOTION_VERBS = ("went to", "moved to", "travelled to", "journeyed to", "walked to", "ran to")

OBJECTS = "football apple milk book key ball cup hat lamp box".split()

PICK_VERBS = ("picked up", "grabbed", "took", "got")
DROP_VERBS = ("dropped", "put down", "left", "discarded")

# symbolic mapping, built-in synthetic classification: pairs of contrasting categories
CATEGORIES: dict[str, tuple[str, ...]] = {
    "animal": tuple(
        "dog cat horse lion tiger bear wolf rabbit mouse sheep goat cow pig fox deer monkey "
        "zebra camel whale shark eagle owl duck frog snake".split()
    ),
    "food": tuple(
        "bread cheese apple banana rice soup pizza pasta salad cake cookie butter honey egg "
        "carrot potato tomato orange grape lemon melon onion bean pie".split()
    ),
    "color": tuple("red blue green yellow purple orange pink brown black white gray violet".split()),
    "number": tuple("one two three four five six seven eight nine ten eleven twelve twenty fifty".split()),
    "body": tuple("hand foot head arm leg knee nose mouth ear eye finger elbow shoulder neck chin".split()),
    "vehicle": tuple("car bus train plane bike boat ship truck tram taxi van rocket scooter".split()),
    "clothing": tuple("shirt coat hat sock shoe dress skirt scarf glove jacket boot belt".split()),
    "weather": tuple("rain snow wind storm fog hail sunshine thunder frost drizzle cloud mist".split()),
}

# category pairs whose words do not overlap (``orange`` is food and color; never paired with both)
CATEGORY_PAIRS: tuple[tuple[str, str], ...] = (
    ("animal", "vehicle"),
    ("animal", "color"),
    ("food", "body"),
    ("color", "number"),
    ("number", "clothing"),
    ("body", "vehicle"),
    ("clothing", "weather"),
    ("animal", "weather"),
    ("food", "vehicle"),
    ("number", "body"),
)

POSITIVE_WORDS = "good great lovely wonderful happy excellent fine nice superb delightful".split()
NEGATIVE_WORDS = "bad awful terrible sad horrible poor dreadful nasty boring ugly".split()
