"""The built-in demo corpus behind `nonllama download sample`.

Every text here is generated on the fly by small template grammars written for this
project (English children's stories, diaries, letters and town news; Chinese news, fairy
tales, essays and diaries; a few short French, German, Spanish, Japanese and Russian
paragraphs), so the whole funnel runs offline and nothing is copied from anywhere.

About two thirds of the documents are clean. The rest carry one planted problem each, named
by `meta["kind"]`, so the tests of later stages can check that they catch it:

=============  ===============================================================================
kind           what it is
=============  ===============================================================================
clean          a good document
exact_dup      a copy of a clean document: identical, or differing only in case, whitespace
               or punctuation (`meta["variant"]`); `meta["origin"]` is the original's position
near_dup       a clean document with a few words (English) or characters (Chinese) inserted,
               deleted or substituted; word-3-gram (en) / char-3-gram (zh) Jaccard with the
               original between 0.78 and 0.95; `meta["origin"]` is the original's position;
               every original has 2-5 such copies
boilerplate    a good text with navigation / cookie banner / copyright lines around it, the
               same lines (`BOILERPLATE_LINES`) over and over across documents
spam           one sentence repeated, keyword stuffing, "buy cheap ... click here" link lists
control_chars  a good text with C0 controls, ANSI colour escapes, zero-width spaces, a BOM
               and soft hyphens sprinkled in
mojibake       a good text (English with curly quotes, or Chinese) encoded as UTF-8 and
               decoded as cp1252 or latin-1
mixed_width    Chinese with ASCII , . ! ? and full-width digits; English with full-width
               ， ！ ？ and full-width letters and digits
foreign        French, German, Spanish, Japanese or Russian (`meta["lang"]`)
near_empty     '', whitespace, 'ok', '*****', one short word
=============  ===============================================================================

An original always comes before its copies (so "keep the first" dedup keeps the clean one).
The order is a deterministic shuffle: the same seed gives the same texts in the same order.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from nonllama.pipeline.records import Record

__all__ = [
    "BOILERPLATE_LINES",
    "KINDS",
    "KIND_COUNTS",
    "SampleDoc",
    "sample_corpus",
    "sample_documents",
    "shingles",
    "jaccard",
]

KINDS = (
    "clean",
    "exact_dup",
    "near_dup",
    "boilerplate",
    "spam",
    "control_chars",
    "mojibake",
    "mixed_width",
    "foreign",
    "near_empty",
)

# How many documents of each kind, per language ("xx": the foreign / near-empty mixes).
KIND_COUNTS: dict[str, dict[str, int]] = {
    "clean": {"en": 250, "zh": 160},
    "exact_dup": {"en": 20, "zh": 12},
    "near_dup": {"en": 24, "zh": 16},
    "boilerplate": {"en": 18, "zh": 12},
    "spam": {"en": 14, "zh": 10},
    "control_chars": {"en": 12, "zh": 8},
    "mojibake": {"en": 12, "zh": 8},
    "mixed_width": {"en": 8, "zh": 12},
    "foreign": {"xx": 23},
    "near_empty": {"xx": 14},
}

NEAR_DUP_JACCARD = (0.78, 0.95)  # target band for a near duplicate vs its original
EN_WORDS = (80, 300)  # words in a generated English text
ZH_CHARS = (100, 400)  # characters in a generated Chinese text


@dataclass(frozen=True, slots=True)
class SampleDoc:
    """One document of the demo corpus, with what was planted in it.

    `clean_text` is the good text the document was made from (for every kind but clean,
    spam, foreign and near_empty); `origin` is the position of the clean original in the
    corpus (exact_dup and near_dup only).
    """

    text: str
    lang: str
    kind: str
    variant: str | None = None
    origin: int | None = None
    clean_text: str | None = None

    @property
    def meta(self) -> dict[str, object]:
        meta: dict[str, object] = {"lang": self.lang, "kind": self.kind}
        if self.variant is not None:
            meta["variant"] = self.variant
        if self.origin is not None:
            meta["origin"] = self.origin
        return meta


# =========================================================================== template engine

_ALT = re.compile(r"\[([^\[\]]*)\]")


def _fill(rng: random.Random, template: str, ctx: dict[str, str]) -> str:
    """Resolve `[a|b|c]` alternatives (innermost first), then `{slot}`s from ctx."""
    text = template
    while True:
        m = _ALT.search(text)
        if m is None:
            break
        text = text[: m.start()] + rng.choice(m.group(1).split("|")) + text[m.end() :]
    return text.format(**ctx)


class _Writer:
    """Picks and fills templates for one document."""

    def __init__(self, rng: random.Random, ctx: dict[str, str]) -> None:
        self.rng = rng
        self.ctx = ctx

    def s(self, *templates: str) -> str:
        return _fill(self.rng, self.rng.choice(templates), self.ctx)

    def maybe(self, p: float, *templates: str) -> str:
        return self.s(*templates) if self.rng.random() < p else ""

    def some(self, k: int, *templates: str) -> list[str]:
        """k different templates, filled, in their listed order."""
        idx = sorted(self.rng.sample(range(len(templates)), min(k, len(templates))))
        return [_fill(self.rng, templates[i], self.ctx) for i in idx]


def _para(*parts: str | list[str]) -> str:
    out: list[str] = []
    for p in parts:
        if isinstance(p, list):
            out.extend(x for x in p if x)
        elif p:
            out.append(p)
    return " ".join(out)


def _zpara(*parts: str | list[str]) -> str:
    return _para(*parts).replace(" ", "")


def _a(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# =========================================================================== English

EN_GIRLS = (
    "Lily Mia Anna Zoe Emma Nora Ruby Ella Ivy Grace Maya Rosa Clara Hana Amara Mei Lena "
    "Priya Elsa Wren Tess Freya Lucy Sara June Alice Iris Nina Olive Ada Leila Noor Bea"
).split()
EN_BOYS = (
    "Tom Ben Max Leo Jack Finn Owen Jake Noah Theo Eli Oscar Hugo Milo Ravi Kofi Diego Omar "
    "Yusuf Arlo Jonah Caleb Luca Sam Felix Henry Kai Ezra Toby Jamal Rafi Nico Amos"
).split()
EN_ANIMALS = (
    ("rabbit", "Pip"), ("fox", "Rusty"), ("mouse", "Squeak"), ("bear", "Bruno"),
    ("duck", "Daisy"), ("owl", "Hoot"), ("squirrel", "Nutmeg"), ("turtle", "Shelly"),
    ("puppy", "Buddy"), ("kitten", "Mittens"), ("hedgehog", "Bramble"), ("frog", "Ribbit"),
    ("goat", "Clover"), ("pig", "Pickles"), ("lamb", "Fluff"), ("badger", "Digby"),
    ("robin", "Chirp"), ("otter", "Splash"), ("deer", "Fern"), ("beaver", "Chip"),
)  # fmt: skip
EN_ADULTS = (
    ("Mom", "she"), ("Dad", "he"), ("Grandma", "she"), ("Grandpa", "he"), ("Aunt Rose", "she"),
    ("Uncle Joe", "he"), ("Miss Park", "she"), ("Mr. Lee", "he"), ("Mrs. Green", "she"),
    ("Nana", "she"), ("Uncle Sol", "he"), ("Aunt May", "she"),
)  # fmt: skip
EN_OBJECTS = (
    "ball kite key shell book hat boat map stone feather drum cup bell lamp coin jar button "
    "ribbon marble whistle spoon box umbrella scarf mitten compass pebble acorn paintbrush "
    "crayon bracelet lantern basket robot puzzle piece"
).split()
EN_OBJECTS = [o for o in EN_OBJECTS if o != "piece"] + [
    "teddy bear",
    "toy car",
    "music box",
    "snow globe",
]
EN_COLORS = "red blue green yellow purple orange pink silver golden brown white black".split()
EN_ADJS = "shiny old tiny big soft striped dusty bright little smooth round strange heavy".split()
EN_PLACES = (
    "garden park forest beach meadow playground riverbank hill farm orchard pond backyard "
    "woods field village square lake shore"
).split()
EN_PLACES = [p for p in EN_PLACES if p not in ("village", "square", "lake", "shore")] + [
    "village square",
    "lake shore",
    "sunflower field",
]
EN_SPOTS = (
    "under a bush", "behind a big rock", "near the old fence", "in the tall grass",
    "next to the pond", "under a pile of leaves", "between two roots of an old tree",
    "at the bottom of the steps", "inside a hollow log", "beside the garden gate",
)  # fmt: skip
EN_TIMES = (
    "One sunny morning", "On a rainy afternoon", "Early one spring day",
    "One cold winter evening", "Late one summer afternoon", "One windy autumn day",
    "On a quiet Saturday morning", "After school one day", "One bright afternoon",
    "On the first warm day of the year", "One foggy morning", "Just before dinner one day",
)  # fmt: skip
EN_FEEL_GOOD = "happy proud warm inside glad calm brave".split()
EN_FEEL_GOOD = [f for f in EN_FEEL_GOOD if f not in ("warm", "inside")] + ["warm inside"]
EN_FOODS = (
    "apple pie", "pancakes", "warm soup", "strawberry jam sandwiches", "cinnamon rolls",
    "carrot cake", "hot cocoa", "banana bread", "peach cobbler", "popcorn",
)  # fmt: skip
EN_TOWNS = (
    "Maple Hill", "Cedar Falls", "Willow Creek", "Brookside", "Oakridge", "Pine Harbor",
    "Stonebridge", "Fairview", "Riverton", "Elm Grove", "Millbrook", "Ashford", "Birchwood",
    "Clearwater", "Foxglen", "Hollowmere",
)  # fmt: skip
EN_SKILLS = (
    ("ride a bike", "riding", "wobbled and fell over"),
    ("swim", "swimming", "swallowed a mouthful of water"),
    ("bake bread", "baking", "made a loaf as hard as a rock"),
    ("climb the big oak tree", "climbing", "slipped down to the first branch"),
    ("play the drum", "drumming", "lost the beat again and again"),
    ("fly a kite", "flying kites", "watched the kite crash into the grass"),
    ("whistle", "whistling", "only made a soft puffing sound"),
    ("tie shoelaces", "tying laces", "ended up with a big knot"),
    ("skate", "skating", "landed on the cold ice"),
    ("juggle three balls", "juggling", "dropped all three balls at once"),
    ("read a long chapter book", "reading", "got stuck on the hard words"),
    ("plant a garden", "gardening", "watched the first seeds wash away in the rain"),
)  # fmt: skip
EN_FEARS = (
    ("the dark", "the night light", "the shadows on the wall were only the coat and the chair"),
    ("thunder", "the storm", "thunder is just the sound the sky makes after lightning"),
    ("the big dog next door", "the dog", "the dog only wanted someone to play with"),
    ("deep water", "the lake", "the water held {him} up when {he} kicked slowly"),
    ("the old attic", "the attic", "the creaking noise was only the wind in the roof"),
    ("the school play", "the stage", "the audience smiled and clapped for everyone"),
    ("bees", "the flowers", "bees are busy and leave you alone if you stay calm"),
)  # fmt: skip
EN_EVENTS = (
    "spring fair", "book sale", "bike race", "pumpkin contest", "science fair", "bake sale",
    "charity run", "music night", "flower show", "chess tournament", "kite festival",
    "farmers market", "tree planting day", "lantern parade", "sandcastle contest",
)  # fmt: skip
EN_VENUES = (
    "public library", "community center", "town hall", "elementary school", "fire station",
    "riverside park", "old railway station", "museum", "sports club", "botanical garden",
)  # fmt: skip
EN_WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
EN_JOBS = (
    "baker", "mail carrier", "librarian", "firefighter", "gardener", "teacher", "bus driver",
    "nurse", "painter", "fisherman",
)  # fmt: skip


def _en_ctx(rng: random.Random) -> dict[str, str]:
    """Characters, things and places of one English story."""
    ctx: dict[str, str] = {}
    girl = rng.random() < 0.5
    if rng.random() < 0.3:
        species, name = rng.choice(EN_ANIMALS)
        ctx["intro"] = (
            f"{_a(rng.choice(['little', 'young', 'small', 'curious', 'cheerful']))} {species} named {name}"
        )
        ctx["species"] = species
        friend_species, friend = rng.choice([a for a in EN_ANIMALS if a[1] != name])
        ctx["ffull"] = f"{friend} the {friend_species}"
        ctx["home"] = rng.choice(
            [
                "in a cozy burrow under an oak tree",
                "in a hollow log by the stream",
                "at the edge of a quiet forest",
                "in a warm nest of moss and leaves",
                "near a bend in the river",
                "on a green hill above the valley",
            ]
        )
        adult = rng.choice(
            [
                (f"Mama {species.capitalize()}", "she"),
                (f"Papa {species.capitalize()}", "he"),
                ("Old Owl", "he"),
                ("Grandma Turtle", "she"),
            ]
        )
        fgirl = rng.random() < 0.5
    else:
        name = rng.choice(EN_GIRLS if girl else EN_BOYS)
        ctx["intro"] = (
            f"{_a(rng.choice(['little', 'young', 'curious', 'kind', 'clever', 'cheerful']))} "
            f"{'girl' if girl else 'boy'} named {name}"
        )
        ctx["species"] = "child"
        fgirl = rng.random() < 0.5
        friend = rng.choice([n for n in (EN_GIRLS if fgirl else EN_BOYS) if n != name])
        ctx["ffull"] = f"{'her' if girl else 'his'} friend {friend}"
        ctx["home"] = rng.choice(
            [
                "in a little house near the woods",
                "in a blue house at the end of the street",
                "on a busy farm",
                "in a tall apartment building in the city",
                "in a small town by the sea",
                "in a yellow cottage with a red door",
                "above a bakery on Main Street",
                "in a village between two hills",
            ]
        )
        adult = rng.choice(EN_ADULTS)
    ctx.update(_pronouns("", girl))
    ctx.update(_pronouns("f", fgirl))
    ctx.update(_pronouns("a", adult[1] == "she"))
    ctx["name"], ctx["fname"], ctx["adult"] = name, friend, adult[0]
    adj = rng.choice(EN_ADJS + EN_COLORS)
    obj = rng.choice(EN_OBJECTS)
    ctx["obj"], ctx["adj"] = obj, adj
    ctx["a_obj"] = _a(f"{adj} {obj}")
    ctx["place"], ctx["place2"] = rng.sample(EN_PLACES, 2)
    ctx["spot"] = rng.choice(EN_SPOTS)
    ctx["Time"] = rng.choice(EN_TIMES)
    ctx["feel"] = rng.choice(EN_FEEL_GOOD)
    ctx["food"] = rng.choice(EN_FOODS)
    ctx["color"] = rng.choice(EN_COLORS)
    ctx["town"] = rng.choice(EN_TOWNS)
    return ctx


def _pronouns(prefix: str, female: bool) -> dict[str, str]:
    he, him, his = ("she", "her", "her") if female else ("he", "him", "his")
    return {
        f"{prefix}he": he,
        f"{prefix}He": he.capitalize(),
        f"{prefix}him": him,
        f"{prefix}his": his,
        f"{prefix}His": his.capitalize(),
    }


def _en_detail(w: _Writer, p: float = 0.6) -> str:
    """An optional sentence of scenery or feeling, to vary the stories."""
    return w.maybe(
        p,
        "The sky was [clear and blue|gray and heavy|full of fluffy white clouds|pink with the setting sun].",
        "The air smelled of [rain|fresh bread|cut grass|pine trees|salt and seaweed|warm apples].",
        "Somewhere far away, a [dog was barking|bell was ringing|train was whistling|rooster was crowing].",
        "{name}'s {color} boots made a [squeaky|squishy|crunchy] sound with every step.",
        "A [soft|cool|warm|sharp] wind [was blowing|played with the leaves|tugged at {his} hair].",
        "{name} hummed a little song that {adult} had taught {him}.",
        "[Bees buzzed|Birds sang|Crickets chirped|Frogs croaked] [in the bushes|nearby|all around].",
        "The [sun|moon] [peeked out from behind a cloud|was [high|low] in the sky].",
        "{name}'s tummy rumbled, because it was nearly time for {food}.",
        "{He} had a funny feeling that today would be [special|different|an adventure].",
        "Everything was quiet, except for the [ticking of the clock|sound of the river|rustle of the leaves].",
        "{name} [skipped|hopped|ran] a little faster, [just for fun|to keep warm|because {he} could].",
        "[Puddles|Daisies|Pine cones|Snails|Fallen leaves] were everywhere, and {name} counted [seven|twelve|twenty] of them.",
        "{name} wore {his} favorite {color} sweater, the one with a [star|fox|boat|heart] on the front.",
    )


def _en_opening(w: _Writer) -> str:
    return w.s(
        "Once upon a time, there was {intro} who lived {home}.",
        "There once was {intro}. {He} lived {home} with {adult}.",
        "Not long ago, {intro} lived {home}.",
        "{intro_cap} lived {home}.",
        "In a place not far from here, there lived {intro}.",
        "This is a story about {intro} who lived {home}.",
    )


def _en_found(w: _Writer) -> list[str]:
    p1 = _para(
        _en_opening(w),
        w.s(
            "{He} loved to play in the {place}.",
            "{His} favorite place in the whole world was the {place}, where {he} could [run and jump|look for bugs|watch the clouds|sing as loud as {he} wanted] all day.",
            "Every day after lunch, {name} went to the {place} to [explore|play|look for treasure].",
        ),
    )
    p2 = _para(
        _en_detail(w),
        w.s(
            "{Time}, {name} [saw|spotted|found] {a_obj} {spot}.",
            "{Time}, something [shiny|strange|colorful] {spot} caught {name}'s eye. It was {a_obj}!",
            "{Time}, while {he} was [skipping|walking|humming a song] through the {place}, {name} almost stepped on {a_obj}.",
        ),
        w.some(
            2,
            "It was [a little dirty|covered in sand|wet from the rain|cold to the touch], but it was [very pretty|still perfect|the nicest {obj} {he} had ever seen].",
            "{name} picked it up and [turned it over in {his} hands|held it up to the light|brushed off the dirt].",
            '{He} [looked around|called out "Hello?"|waited for a moment], but nobody was there.',
        ),
        w.s(
            '"Who does this {obj} belong to?" {he} wondered.',
            '"Someone must be missing this," {he} said [quietly|to {him}self|out loud].',
            '"I wish I could keep it," {he} thought, "but it isn\'t mine."',
        ),
    )
    p3 = _para(
        _en_detail(w, 0.4),
        w.s(
            "{He} showed it to {ffull}, but {fhe} did not know whose it was.",
            '{He} ran to find {ffull}. "Have you seen this before?" {he} asked. {fHe} shook {fhis} head.',
            "First {he} asked {ffull}, and then {he} asked everyone [at the {place2}|on the street|in the {place}].",
        ),
        w.s(
            'Then {he} went home and asked {adult}. "[Maybe|Perhaps] it belongs to [the old man next door|the girl who lives by the bakery|the family with the green gate|the twins from across the road]," {ahe} said.',
            'At last {adult} had an idea. "Let\'s [make a sign|put up a note|ask at the shop on the corner]," {ahe} said. So they did.',
            "{adult} helped {him} write a note that said: Found: {a_obj}. Ask for {name}.",
        ),
    )
    p4 = _para(
        w.s(
            "The next day, a [tall|small|tired-looking|smiling] [man|woman|boy|girl] knocked on the door.",
            "Soon the owner came, [out of breath|with a big smile|holding a little dog on a leash].",
            "That evening, the owner [came by|stopped at the gate|called on the phone].",
        ),
        w.s(
            '"[You found it|There it is]! I lost this [last week|yesterday|a long time ago], and I looked everywhere!"',
            '"Thank you so much! This {obj} was a present from my [grandmother|best friend|father]."',
        ),
        w.some(
            2,
            "To say thank you, the owner gave {name} [a big hug|a warm cookie|a yellow flower|a shiny sticker].",
            "The owner [shook {name}'s hand|smiled from ear to ear|laughed with joy].",
        ),
        w.some(
            2,
            "{name} felt {feel} all day. Giving something back felt even better than keeping it.",
            "{name} learned that [doing the right thing|being honest|helping someone] can make two people happy at once.",
            "That night, {name} fell asleep with a smile on {his} face.",
        ),
    )
    return [p1, p2, p3, p4]


def _en_lost(w: _Writer) -> list[str]:
    p1 = _para(
        _en_opening(w),
        w.s(
            "{name} had {a_obj} that {he} took everywhere.",
            "{His} most special thing was {a_obj} from {adult}.",
            "{name} loved {his} {adj} {obj} more than any other toy.",
        ),
        w.maybe(
            0.7,
            "{He} kept it [in {his} pocket|under {his} pillow|on the shelf by the window] and looked at it every day.",
        ),
    )
    p2 = _para(
        _en_detail(w),
        w.s(
            "{Time}, {name} reached for the {obj}, but it was gone!",
            "{Time}, {name} came back from the {place} and saw that the {obj} was missing.",
            "But {Time_low}, the {obj} was not where it should be.",
        ),
        w.some(
            2,
            "{He} looked under the bed, behind the door and inside every box.",
            "{He} searched the kitchen, the hall and even the bathtub.",
            "{He} emptied {his} bag and turned out all {his} pockets.",
        ),
        w.s(
            '"Oh no," {he} said, and {his} eyes filled with tears.',
            "{name} sat down on the floor and felt very sad.",
            '"Where could it be?" {he} cried.',
        ),
    )
    w.ctx["helper"] = w.rng.choice([w.ctx["fname"], w.ctx["adult"]])
    p3 = _para(
        _en_detail(w, 0.4),
        w.s(
            "{ffull} came to help."
            if w.ctx["helper"] == w.ctx["fname"]
            else "{adult} saw {his} sad face and sat down next to {him}.",
            "Just then {ffull} knocked on the door."
            if w.ctx["helper"] == w.ctx["fname"]
            else "{adult} came in and asked what was wrong.",
        ),
        w.s(
            '"Let\'s think," said {helper}. "Where did you have it last?"',
            "\"Don't worry. We'll look together,\" said {helper}.",
            '"Every lost thing is somewhere," said {helper}. "We just have to find the somewhere."',
        ),
        w.s(
            "They walked back to the {place} and followed the path {name} had taken.",
            "They checked the {place}, then the {place2}, one step at a time.",
            "They made a list of every place {name} had been that day.",
        ),
    )
    p4 = _para(
        w.s(
            'At last {helper} pointed {spot}. "Look!"',
            "Suddenly {name} saw something {color} {spot}.",
            "Just when they were about to give up, a little bird hopped out from {spot}, and there it was.",
        ),
        w.s(
            "It was the {obj}! {name} hugged it close.",
            "There was the {adj} {obj}, safe and sound.",
        ),
        w.some(
            2,
            "From that day on, {name} was more careful with the things {he} loved.",
            "{name} learned that a good friend makes every problem smaller.",
            '"Thank you for helping me," {he} said, and they shared {food} to celebrate.',
        ),
    )
    return [p1, p2, p3, p4]


def _en_skill(w: _Writer) -> list[str]:
    skill, doing, fail = w.rng.choice(EN_SKILLS)
    w.ctx.update(skill=skill, doing=doing, fail=fail)
    p1 = _para(
        _en_opening(w),
        w.s(
            "More than anything, {name} wanted to learn to {skill}.",
            "{name} had one big wish: {he} wanted to {skill}.",
            "All of {his} friends could {skill}, but {name} could not. Not yet.",
        ),
    )
    p2 = _para(
        _en_detail(w),
        w.s(
            "The first time {he} tried, {he} {fail}.",
            "{Time}, {he} tried for the very first time, and {he} {fail}.",
        ),
        w.some(
            2,
            "{He} tried again, and again {he} {fail}.",
            "{His} cheeks turned red, and {he} wanted to stop.",
            '"I will never be good at {doing}," {he} said, [and kicked a stone|and folded {his} arms|and went inside].',
        ),
    )
    p3 = _para(
        _en_detail(w, 0.4),
        w.s(
            "{adult} sat down beside {him}.",
            "Then {adult} came out to the {place}.",
            "{ffull} saw {him} and came over.",
        ),
        w.s(
            '"Everybody falls at first," {ahe} said. "Try one small step at a time."',
            '"When I was little, I was scared of {doing} too," {ahe} said with a smile.',
            "\"Don't give up. Let's practice a little bit every day,\" {ahe} said.",
        ),
        w.s(
            "So {name} practiced [every morning|every afternoon|after dinner] for a whole [week|month].",
            "Day after day, {name} practiced. Some days were hard, and some days were a little easier.",
        ),
    )
    p4 = _para(
        w.s(
            "Then one day, something wonderful happened.",
            "And then, on a [bright|cool|windy] [Sunday|Tuesday|Friday], it finally worked.",
        ),
        w.s(
            "{name} could {skill}! {He} laughed out loud.",
            "{He} did it all by {him}self, from start to finish.",
        ),
        w.s(
            '"I did it!" {he} shouted, and {adult} clapped and cheered.',
            "{ffull} cheered so loudly that the birds flew out of the trees.",
        ),
        w.some(
            2,
            "{name} learned that practice makes hard things easy.",
            "Now {name} helps other children who are just learning, because {he} remembers how it felt.",
            "That evening they ate {food} to celebrate.",
        ),
    )
    return [p1, p2, p3, p4]


def _en_fear(w: _Writer) -> list[str]:
    fear, thing, truth = w.rng.choice(EN_FEARS)
    w.ctx.update(fear=fear, thing=thing, truth=truth.format(**w.ctx))
    p1 = _para(
        _en_opening(w),
        w.s(
            "{name} was brave about most things, but {he} was afraid of {fear}.",
            "{name} was scared of {fear}. Just thinking about it made {his} tummy feel funny.",
            "There was only one thing {name} did not like at all, and that was {fear}.",
        ),
    )
    p2 = _para(
        _en_detail(w),
        w.s(
            "{Time}, {name} had to face {fear}.",
            '{Time}, {adult} said, "Today is the day we visit {thing}."',
        ),
        w.some(
            2,
            "{His} hands shook, and {he} hid behind {adult}.",
            "{He} closed {his} eyes tight and held {his} breath.",
            '"I can\'t," {he} whispered. "I just can\'t."',
        ),
    )
    p3 = _para(
        _en_detail(w, 0.4),
        w.s(
            "{adult} knelt down and held {his} hand.",
            "{ffull} stood right next to {him}.",
        ),
        w.s(
            '"It\'s okay to be scared," {ahe} said. "Being brave means trying even when you are scared."',
            '"Let\'s count to ten together," {ahe} said, "and then we will take one small step."',
            '"Look closely," {ahe} said softly. "What do you really see?"',
        ),
        w.s(
            "{name} took a deep breath and opened {his} eyes.",
            "So they counted, one, two, three, all the way to ten.",
        ),
    )
    p4 = _para(
        w.s(
            "Little by little, {name} saw that {truth}.",
            "Slowly {name} understood that {truth}.",
        ),
        w.s(
            "{He} was not afraid anymore.",
            "{His} fear got smaller and smaller until it was almost gone.",
        ),
        w.some(
            2,
            "Now, when {fear} comes, {name} remembers that day and smiles.",
            "{name} felt {feel}, and that night {he} told the whole story to {ffull}.",
            "Being brave, {he} learned, does not mean you are never scared.",
        ),
    )
    return [p1, p2, p3, p4]


def _en_share(w: _Writer) -> list[str]:
    p1 = _para(
        w.s(
            "{name} and {fname} were best friends.",
            "{name} and {fname} did everything together.",
            "{name} and {fname} lived next door to each other {home}.",
        ),
        _en_detail(w, 0.5),
        w.some(
            2,
            "They played in the {place} every day.",
            "They shared snacks, secrets and [songs|jokes|stories].",
            "They liked the same games and the same books.",
        ),
    )
    p2 = _para(
        w.s(
            "{Time}, they found {a_obj} in the {place}.",
            "{Time}, {adult} gave them {a_obj} to play with.",
        ),
        w.s(
            '"It\'s mine!" said {name}. "No, it\'s mine!" said {fname}.',
            "They both grabbed it at the same time and pulled as hard as they could.",
            '"I saw it first," said {name}. "But I touched it first," said {fname}.',
        ),
        w.s(
            "Soon they were both angry, and nobody was having fun.",
            "Then {fname} walked away, and {name} was left alone with the {obj}.",
            "The {obj} fell to the ground, and they both stood there with crossed arms.",
        ),
    )
    p3 = _para(
        w.s(
            "Playing alone was not fun at all.",
            "{name} looked at the {obj}. It did not seem so special anymore.",
            "The {place} felt very quiet without {his} friend.",
        ),
        w.maybe(
            0.7,
            "{name} remembered all the fun they had [last summer|at the birthday party|on the school trip], and {his} heart felt heavy.",
            "{He} tried to play alone, but every game needed a second player.",
        ),
        w.s(
            '{name} walked over to {fname}. "I\'m sorry," {he} said. "Do you want to take turns?"',
            '{adult} came by and asked, "What if you play with it together?"',
        ),
    )
    p4 = _para(
        w.s(
            '{fname} smiled. "I\'m sorry too."',
            "They looked at each other and started to laugh.",
        ),
        w.s(
            "They took turns, and then they made up a new game that needed two players.",
            "Together they [built a tiny house for the {obj}|made up a story about the {obj}|invented a game with the {obj} and two sticks].",
        ),
        w.some(
            2,
            "It was the best afternoon of the whole [summer|week|year].",
            "Sharing, they found, made the fun twice as big.",
            "When the sun went down, they were still best friends.",
        ),
    )
    return [p1, p2, p3, p4]


def _en_trip(w: _Writer) -> list[str]:
    dest, sights = w.rng.choice(
        [
            (
                "the beach",
                [
                    "crabs running sideways",
                    "white boats far away",
                    "shells of every shape",
                    "a lighthouse on the rocks",
                ],
            ),
            (
                "the zoo",
                [
                    "a sleepy lion",
                    "two giraffes eating leaves",
                    "penguins diving into cold water",
                    "a monkey with a baby",
                ],
            ),
            (
                "the farm",
                [
                    "a cow with a bell",
                    "little chicks",
                    "a tractor as big as a house",
                    "piglets rolling in the mud",
                ],
            ),
            (
                "the mountains",
                [
                    "a waterfall",
                    "a hawk circling above",
                    "snow on the highest peak",
                    "a wooden bridge over a stream",
                ],
            ),
            (
                "the city museum",
                [
                    "a giant dinosaur skeleton",
                    "a room full of old clocks",
                    "paintings of the sea",
                    "a real space suit",
                ],
            ),
            (
                "the county fair",
                ["a huge pumpkin", "a merry-go-round", "a pie contest", "sheep with ribbons"],
            ),
            (
                "the aquarium",
                [
                    "a turtle as old as Grandpa",
                    "jellyfish that glowed",
                    "a shark swimming slowly",
                    "tiny orange fish",
                ],
            ),
        ]
    )
    a, b, c = w.rng.sample(sights, 3)
    w.ctx.update(dest=dest, s1=a, s2=b, s3=c)
    p1 = _para(
        w.s(
            "{Time}, {name} and {adult} went to {dest}.",
            "{name} had waited all week for the trip to {dest}.",
            '"Wake up, sleepy head! Today we are going to {dest}," said {adult}.',
        ),
        w.some(
            2,
            "{name} was so excited that {he} could hardly sit still.",
            "{name} packed {his} {adj} {obj}, a bottle of water and some {food}.",
            "They [took the bus|drove for an hour|rode their bikes] and sang songs on the way.",
        ),
    )
    p2 = _para(
        _en_detail(w),
        w.s(
            "First they saw {s1}. Then they saw {s2}.",
            "There was so much to see: {s1}, {s2} and {s3}.",
            "{name} liked {s1} best of all, and {adult} liked {s2}.",
        ),
        w.some(
            2,
            '"Look at that!" {name} said again and again.',
            "{name} drew pictures of everything in a little notebook.",
            "{adult} told {him} stories about each thing they saw.",
        ),
    )
    lunch = _para(
        w.s(
            "At noon they sat on a bench and ate {food}.",
            "For lunch they found a shady spot and shared {food}.",
            "They were hungry, so they stopped at a little cafe for {food}.",
        ),
        w.maybe(
            0.7,
            "A [pigeon|sparrow|seagull] [waited for crumbs|watched them hopefully|hopped closer and closer].",
            "{name} saved a piece for {ffull}.",
        ),
    )
    p3 = _para(
        _en_detail(w, 0.4),
        w.s(
            "Then something went wrong. [A gust of wind blew {his} hat away|{name} dropped {his} {food} on the ground|It started to rain very hard].",
            "After lunch, {name} could not find {adult} in the crowd!",
        ),
        w.s(
            "{He} stayed calm and remembered what to do.",
            "But a kind [lady|man|guard] helped, and soon everything was fine again.",
            "For a moment {he} was upset, but then {he} saw the funny side and laughed.",
        ),
    )
    p4 = _para(
        w.s(
            "On the way home, {name} fell asleep with a big smile.",
            "That night {name} told {ffull} all about it.",
        ),
        w.s(
            "It was the best day ever.",
            '"Can we go again next [week|month|summer]?" {he} asked.',
            "{He} kept {his} ticket as a souvenir on the wall above {his} bed.",
        ),
    )
    return [p1, p2, lunch, p3, p4]


def _en_help(w: _Writer) -> list[str]:
    who, wpron, need, fix = w.rng.choice(
        [
            (
                "a little bird",
                "it",
                "had a hurt wing",
                "made it a soft nest in a shoe box until the wing was strong",
            ),
            (
                "a kitten",
                "it",
                "was stuck high up in a tree",
                "fetched a ladder with {adult} and carried it down",
            ),
            (
                "an old man",
                "he",
                "had dropped all his apples on the road",
                "picked them up one by one and put them back in his bag",
            ),
            (
                "a lost puppy",
                "it",
                "was shivering in the rain",
                "read the name on its collar and took it home to its family",
            ),
            (
                "a small turtle",
                "it",
                "was trying to cross a busy path",
                "carried it gently to the pond",
            ),
            (
                "a new girl from {his} class",
                "she",
                "was sitting alone at lunch",
                "sat down next to her and shared {food}",
            ),
            (
                "an old woman",
                "she",
                "could not reach the top shelf at the shop",
                "climbed on a stool and handed her the jar",
            ),
            (
                "a baby duck",
                "it",
                "had lost its mother",
                "followed the quacking sounds to the river",
            ),
            (
                "a little boy",
                "he",
                "had let go of his balloon",
                "climbed the fence and caught the string just in time",
            ),
            (
                "a tired mail carrier",
                "she",
                "had dropped a whole bag of letters in the wind",
                "chased the letters across the {place} and gathered every one",
            ),
        ]
    )
    w.ctx.update(
        who=_fill(w.rng, who, w.ctx),
        the_who="the " + _fill(w.rng, who, w.ctx).split(" ", 1)[1],
        wpron=wpron,
        need=need,
        fix=_fill(w.rng, fix, w.ctx),
    )
    p1 = _para(
        _en_opening(w),
        w.some(
            2,
            "{He} liked to help others.",
            "{He} was small, but {he} had a big heart.",
            "{He} always noticed when someone was sad.",
        ),
    )
    p2 = _para(
        _en_detail(w),
        w.s(
            "{Time}, {name} was walking [past|near|around] the {place} when {he} saw {who}.",
            "{Time}, on the way to the {place}, {name} heard a small noise. It was {who}.",
        ),
        w.s("{wpron} {need}.", "{name} saw that {wpron} {need}.", "Poor thing, {wpron} {need}."),
        w.some(
            2,
            "Other people walked past, but {name} stopped.",
            "{name} did not know what to do at first.",
            '"I have to help," {name} said.',
        ),
    )
    p3 = _para(
        _en_detail(w, 0.4),
        w.s(
            "{He} thought for a moment.",
            "{He} asked {adult} for help.",
            "{He} called {ffull} over.",
        ),
        w.s("Then {he} {fix}.", "Carefully, {he} {fix}.", "Together they {fix}."),
        w.maybe(
            0.6,
            "It took a long time, but {name} was patient.",
            "It was not easy, but {he} did not give up.",
        ),
    )
    p4 = _para(
        w.s(
            "When it was done, {name} felt {feel}.",
            'Afterwards, {adult} said, "I am so proud of you."',
        ),
        w.some(
            2,
            "Helping, {he} learned, is one of the best feelings in the world.",
            "From then on, {name} visited {the_who} every day."
            if wpron == "it"
            else "From then on, {name} and {the_who} were friends.",
            "It was a small thing to do, but it meant a lot.",
        ),
    )
    return [p1, p2, p3, p4]


def _en_make(w: _Writer) -> list[str]:
    thing, oops = w.rng.choice(
        [
            ("a birthday cake", "the cake came out of the oven flat as a pancake"),
            ("a sandcastle", "a big wave washed one tower away"),
            ("a painting", "a drop of water made the colors run"),
            ("a paper crown", "the glue would not stick"),
            ("a birdhouse", "the roof kept falling off"),
            ("a card with flowers on it", "{fname} spilled juice all over it"),
            ("a clay pot", "one side of the pot cracked"),
            ("a blanket fort", "the whole fort fell down"),
        ]
    )
    w.ctx.update(thing=thing, oops=_fill(w.rng, oops, w.ctx))
    p1 = _para(
        w.s(
            "{Time}, {name} decided to make {thing} for {adult}.",
            "It was almost {adult}'s birthday, and {name} wanted to make {thing}.",
            "{name} had a plan. {He} was going to make {thing}, all by {him}self.",
        ),
        w.some(
            2,
            "{He} gathered everything {he} needed and set to work.",
            "{He} worked very hard and was very careful.",
            "{ffull} came to help, and they worked side by side.",
        ),
    )
    p2 = _para(
        _en_detail(w),
        w.s(
            "But then {oops}.",
            "Everything was going well until {oops}.",
            "Oh no! Just when it was nearly done, {oops}.",
        ),
        w.s(
            "{name} wanted to cry.",
            '"It\'s ruined," {he} said quietly.',
            "{He} sat down and stared at the mess.",
        ),
        w.maybe(
            0.7,
            "All that work, and now there was no time to start again.",
            "{fname} patted {his} back, but it did not help much.",
        ),
    )
    p3 = _para(
        _en_detail(w, 0.4),
        w.s(
            "Then {he} had an idea.",
            '{fname} said, "Maybe we can fix it."',
            "After a while {he} stood up and tried again.",
        ),
        w.s(
            "{He} used {a_obj} and some {color} paper to make it even better than before.",
            "They added a little {color} on top, and it looked wonderful.",
            "It was not perfect, but it was made with love.",
        ),
        w.maybe(
            0.6,
            "{He} worked until the sun went down, and {adult} never guessed a thing.",
            "They giggled the whole time and hid it under a blanket when they heard footsteps.",
        ),
    )
    p4 = _para(
        w.s(
            "When {adult} saw it, {ahe} smiled the biggest smile.",
            "{adult} said it was the best present {ahe} had ever received.",
        ),
        w.some(
            2,
            "{name} learned that mistakes can turn into something special.",
            "The best gifts, {he} found, are the ones you make yourself.",
            "They put it [on the kitchen table|by the window|on the top shelf] where everyone could see it.",
        ),
    )
    return [p1, p2, p3, p4]


def _en_weather(w: _Writer) -> list[str]:
    weather, play, later = w.rng.choice(
        [
            (
                "the first snow of winter",
                "built a snowman with a carrot nose and a {color} scarf",
                "made snow angels until their mittens were soaked",
            ),
            (
                "a long rainy day",
                "built a fort out of pillows and read stories inside",
                "raced paper boats down the wet street",
            ),
            (
                "a very hot summer day",
                "ran through the sprinkler and ate cold watermelon",
                "made lemonade and sold it for five cents a cup",
            ),
            (
                "a windy autumn day",
                "jumped into big piles of orange and yellow leaves",
                "flew a paper kite high over the rooftops",
            ),
            (
                "a foggy spring morning",
                "played hide and seek in the soft gray fog",
                "listened to the foghorn down by the harbor",
            ),
            (
                "a starry night",
                "lay on a blanket and counted the stars",
                "looked for shooting stars and made wishes",
            ),
            (
                "a big thunderstorm",
                "counted the seconds between the flashes and the booms",
                "watched the rain from under a warm blanket",
            ),
        ]
    )
    w.ctx.update(weather=weather, play=_fill(w.rng, play, w.ctx), later=_fill(w.rng, later, w.ctx))
    p1 = _para(
        w.s(
            "{name} woke up and looked out of the window. It was {weather}!",
            "When {name} woke up, it was {weather}.",
            "Nobody in the house expected {weather}, but there it was.",
        ),
        w.some(
            2,
            "{He} ran to tell {adult}.",
            "{He} put on {his} {color} coat as fast as {he} could.",
            "{He} pressed {his} nose against the cold glass and smiled.",
            "{He} could not wait to call {ffull}.",
        ),
        _en_detail(w, 0.5),
    )
    p2 = _para(
        _en_detail(w),
        w.s(
            "Before long, {name} and {fname} {play}.",
            "All morning long, {name} and {fname} {play}.",
        ),
        w.some(
            2,
            "They laughed until their cheeks hurt.",
            "{adult} watched them from the porch and smiled.",
            "Even the {species_word} came out to watch.",
        ),
        w.s(
            "After that, they {later}.",
            "Then they {later}, which was even more fun.",
        ),
    )
    p3 = _para(
        w.s(
            "Later, {adult} made {food} for everyone.",
            "When it was time to go in, they were tired but happy.",
            "By the evening, their noses were red and their legs were tired.",
        ),
        w.some(
            2,
            '"This is the best kind of day," said {name}.',
            '"Can tomorrow be like this too?" asked {fname}.',
            "{name} wrote about the day in {his} notebook before bed.",
            "That night {name} dreamed of {weather} all over again.",
        ),
    )
    return [p1, p2, p3]


def _en_fable(w: _Writer) -> list[str]:
    (a1, n1), (a2, n2) = w.rng.sample(EN_ANIMALS, 2)
    proud, humble = w.rng.choice(
        [
            ("fast", "slow but steady"),
            ("strong", "small but clever"),
            ("beautiful", "plain but kind"),
            ("loud", "quiet but wise"),
            ("proud", "humble"),
            ("rich", "poor but generous"),
        ]
    )
    contest = w.rng.choice(
        [
            "a race to the big tree on the hill",
            "a contest to carry the most acorns before sunset",
            "a game to find the hidden spring in the woods",
            "a challenge to cross the river first",
            "a contest to build the best house before the first frost",
            "a search for the sweetest berries in the valley",
        ]
    )
    w.ctx.update(a1=a1, n1=n1, a2=a2, n2=n2, proud=proud, humble=humble, contest=contest)
    p1 = _para(
        w.s(
            "In the middle of the forest lived a {proud} {a1} named {n1} and a {humble} {a2} named {n2}.",
            "Long ago, a {proud} {a1} called {n1} liked to tease a {humble} {a2} called {n2}.",
            "There was once a {a1} named {n1} who was very {proud}, and a {a2} named {n2} who was {humble}.",
        ),
        w.some(
            2,
            '"Nobody in the whole forest is better than me," {n1} liked to say.',
            "{n1} laughed at {n2} every day, in front of all the other animals.",
            "{n2} never answered back. {n2} just smiled and went on with the day's work.",
            "The other animals did not like {n1}'s boasting, but they said nothing.",
        ),
    )
    p2 = _para(
        w.s(
            "One day the animals agreed on {contest}.",
            "So the old owl of the forest set up {contest}.",
            'When spring came, {n1} called for {contest}. "I will show you all," {n1} said.',
        ),
        w.s(
            "Everyone came to watch, from the smallest ant to the tallest deer.",
            "The whole forest gathered at the starting line.",
        ),
        w.some(
            2,
            "{n1} was sure to win and did not even try hard.",
            "{n1} stopped to show off to everyone on the way.",
            "{n1} took a nap in the sun, certain there was plenty of time.",
            "{n1} ate a big lunch and rested under a shady bush.",
        ),
        w.some(
            2,
            "{n2} kept going, one step after another.",
            "{n2} thought carefully and found a better way.",
            "{n2} did not stop, not even when {n2} was tired.",
        ),
    )
    p3 = _para(
        w.s(
            "When {n1} finally arrived, {n2} was already there.",
            "In the end, it was {n2} who won, and all the animals cheered.",
            "By the time {n1} woke up, the sun was setting, and {n2} had already won.",
        ),
        w.some(
            2,
            "{n1} felt foolish and said sorry.",
            "{n1} learned to stop boasting that day.",
            '{n2} did not laugh at {n1}, but offered a paw and said, "Let\'s be friends."',
        ),
        w.s(
            "The moral of the story: [slow and steady wins the race|it is better to be kind than to be proud|never laugh at someone who is different|hard work beats showing off].",
            "And from then on, {n1} and {n2} were friends.",
        ),
    )
    return [p1, p2, p3]


def _en_diary(w: _Writer) -> list[str]:
    head = w.s("Dear Diary,", "Dear Diary,", "{weekday}, dear diary,")
    p1 = _para(
        w.s(
            "Today was a [good|strange|long|funny|very busy] day.",
            "I have so much to tell you about today.",
            "Something happened today that I want to remember.",
        ),
        w.s(
            "In the morning I went to the {place} with {adult}.",
            "After breakfast, {fname} came over and we went to the {place}.",
            "It rained all morning, so I stayed inside and drew pictures until lunch.",
        ),
        w.some(
            1,
            "The sky was [clear and blue|gray and heavy|full of fluffy clouds], and it was [warm|chilly|windy].",
            "I wore my {color} boots even though {adult} said I did not need them.",
            "On the way we passed the bakery, and it smelled like {food}.",
        ),
    )
    p2 = _para(
        w.some(
            3,
            "We found {a_obj} {spot}.",
            "We saw {a_species} that was [eating berries|sleeping in the sun|chasing its tail].",
            "At lunch we had {food}, which is my favorite.",
            "{fname} told me a joke about a penguin and a fridge, and I laughed so much I got hiccups.",
            "Our teacher said we will have a [science fair|school play|class trip] next month.",
            "I tried to {skill} again. I am getting better!",
            "I lost my {adj} {obj}, but then I found it in my other pocket.",
        ),
        w.s(
            "In the afternoon we [played tag|built a dam in the stream|made a card for {adult}|read comics under a tree].",
            "Later, {adult} showed me how to [make {food}|fix my bike chain|plant tomato seeds].",
        ),
    )
    p3 = _para(
        w.some(
            2,
            "Tomorrow I want to [go back to the {place2}|finish my drawing|call Grandma|help {adult} in the garden].",
            "I am tired now, but it was a good kind of tired.",
            "I hope {fname} can come over again soon.",
        ),
        w.s("Good night!", "That's all for today.", "Bye for now,"),
    )
    return [head, p1, p2, p3, w.ctx["name"]]


def _en_letter(w: _Writer) -> list[str]:
    head = w.s("Dear {adult},", "Hello {adult},", "Dear {fname},")
    p1 = _para(
        w.some(
            2,
            "How are you? I hope you are well.",
            "I miss you a lot. It feels like a long time since we saw each other.",
            "Thank you for the {adj} {obj} you sent me. I love it!",
        ),
        w.s(
            "Things here in {town} are [good|busy|quiet].",
            "The weather in {town} has been [warm and sunny|cold and windy|rainy all week].",
        ),
    )
    p2 = _para(
        w.some(
            3,
            "Last week I learned to {skill}.",
            "Our class went to the {venue} and I saw [an old map of the town|a fire truck up close|a room full of butterflies].",
            "{fname} and I started a club. We meet in the {place} every Friday.",
            "I am reading a book about [pirates|the moon|a dragon who is afraid of mice], and it is very exciting.",
            "We have a new {pet} called {petname}. {PetHe} is very [naughty|sleepy|funny].",
            "There is a new {food} shop on our street, and it is very good.",
        ),
        w.s(
            "I also helped {adult2} [bake {food}|paint the fence|wash the car|clean the attic].",
            "I have been practicing the [piano|recorder|violin] every day.",
        ),
        w.maybe(
            0.6,
            "It was hard at first, but now I can do it without help.",
            "{adult2} says I am getting much better.",
        ),
    )
    p3 = _para(
        w.some(
            2,
            "Please write back soon and tell me about your [garden|cat|trip|week].",
            "I drew you a picture of the {place}. It is in the envelope.",
            "I can't wait to see you [in the summer|at the holidays|next month].",
        ),
    )
    return [head, p1, p2, p3, w.s("Love,", "Your friend,", "Hugs,", "See you soon,"), w.ctx["name"]]


def _en_news(w: _Writer) -> list[str]:
    rng = w.rng
    w.ctx.update(
        event=rng.choice(EN_EVENTS),
        venue=rng.choice(EN_VENUES),
        day=rng.choice(EN_WEEKDAYS),
        n=str(rng.randrange(40, 900)),
        k=str(rng.randrange(3, 30)),
        money=str(rng.randrange(2, 60) * 50),
        year=str(rng.choice(range(1962, 2015))),
        person=f"{rng.choice(EN_GIRLS + EN_BOYS)} {rng.choice(['Miller', 'Okafor', 'Chen', 'Garcia', 'Novak', 'Patel', 'Brooks', 'Silva', 'Hughes', 'Kowalski', 'Nguyen', 'Moreau'])}",
        job=rng.choice(EN_JOBS),
        resident=rng.choice(EN_GIRLS + EN_BOYS),
        winner=rng.choice(EN_GIRLS + EN_BOYS),
        age=str(rng.randrange(7, 80)),
    )
    w.ctx["event_title"] = w.ctx["event"].title()
    title = w.s(
        "{town} [celebrates|enjoys|welcomes] {event_title}",
        "{event_title} [draws|brings] [big crowd|hundreds] to {town}",
        "{event_title} returns to {town}",
    )
    p1 = _para(
        w.s(
            "The {venue} in {town} [held|hosted] its [first|annual|yearly|long-awaited] {event} on {day}.",
            "[More than|About|Nearly] {n} people came to the {event} at the {venue} in {town} on {day}.",
            "On {day}, the {venue} in {town} was busy from early morning, as the {event} [opened its doors|got under way|began].",
        ),
        w.s(
            "The [event|day] was [organized|planned|run] by [volunteers|a group of parents|the local {job}s|students from the high school].",
            "It was the [first|biggest|busiest] {event} in the town since {year}.",
        ),
        w.maybe(
            0.6,
            "Planning started [in the winter|months ago|last autumn], and [dozens of|many] volunteers helped to get everything ready.",
        ),
    )
    p2 = _para(
        w.some(
            4,
            "[Families|Visitors|Neighbors] [walked|came] from all parts of town, and some [drove|traveled] from nearby villages.",
            "There were {k} [stalls|tables|teams], [music|games|face painting] for children and [free lemonade|homemade {food}|hot soup].",
            '"We [wanted|hoped] to bring people together," said {person}, [one of the organizers|a local {job}|who has lived in {town} for years].',
            "The [weather|sky] [stayed dry|was bright and clear|turned cloudy but stayed kind] all day.",
            "[A band from the school|A local choir|Two young fiddlers] [played|performed] in the afternoon.",
            "The [top|first] prize went to {winner}, age {age}, [who could not stop smiling|who thanked [her|his] family|who said it was a big surprise].",
            "The event raised {money} dollars for the [library|animal shelter|new playground|school garden].",
        ),
    )
    p3 = _para(
        w.s(
            '"[It was wonderful|I loved every minute|We will be back next year]," said {resident}, who came with [her|his] [family|grandparents|two little brothers].',
            "[Children|Young visitors] especially enjoyed the [treasure hunt|puppet show|pony rides|story tent].",
        ),
        w.s(
            "The organizers say they hope to make the {event} [a yearly tradition|even bigger next year|a regular part of town life].",
            "The next {event} is planned for [the spring|next autumn|the end of the summer].",
        ),
        w.maybe(0.5, "Anyone who wants to help can sign up at the {venue}."),
    )
    return [title, p1, p2, p3]


_EN_GENRES: tuple[tuple[Callable[[_Writer], list[str]], float], ...] = (
    (_en_found, 1.0),
    (_en_lost, 1.0),
    (_en_skill, 1.0),
    (_en_fear, 1.0),
    (_en_share, 1.0),
    (_en_trip, 1.0),
    (_en_help, 1.0),
    (_en_make, 1.0),
    (_en_weather, 0.8),
    (_en_fable, 0.8),
    (_en_diary, 0.8),
    (_en_letter, 0.8),
    (_en_news, 1.0),
)


_SENT_START = re.compile(r"(^|[.!?] )([a-z])")


def _en_text(rng: random.Random) -> tuple[str, str]:
    """One English document: (text, genre)."""
    gens = [g for g, _ in _EN_GENRES]
    weights = [wt for _, wt in _EN_GENRES]
    while True:
        gen = rng.choices(gens, weights)[0]
        ctx = _en_ctx(rng)
        ctx["intro_cap"] = _cap(ctx["intro"])
        ctx["Time_low"] = ctx["Time"][0].lower() + ctx["Time"][1:]
        ctx["species_word"] = "neighbors" if ctx["species"] == "child" else "other animals"
        ctx["a_species"] = _a(rng.choice([a for a, _ in EN_ANIMALS]))
        ctx["weekday"] = rng.choice(EN_WEEKDAYS)
        ctx["skill"] = rng.choice(EN_SKILLS)[0]
        ctx["venue"] = rng.choice(EN_VENUES)
        pet, petname = rng.choice(EN_ANIMALS)
        ctx["pet"], ctx["petname"] = pet, petname
        ctx["PetHe"] = rng.choice(["He", "She"])
        ctx["adult2"] = rng.choice([a for a, _ in EN_ADULTS if a != ctx["adult"]])
        ctx["event_title"] = rng.choice(EN_EVENTS).title()
        w = _Writer(rng, ctx)
        paras = [_SENT_START.sub(lambda m: m.group(1) + m.group(2).upper(), p) for p in gen(w) if p]
        text = "\n\n".join(paras)
        n = len(text.split())
        if EN_WORDS[0] <= n <= EN_WORDS[1]:
            return text, gen.__name__.removeprefix("_en_")


# =========================================================================== Chinese

ZH_SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董萧程曹袁邓许傅沈曾彭吕"
ZH_GIVEN = (
    "明 红 晓燕 建国 丽华 文杰 子涵 欣怡 浩然 雨桐 思远 佳怡 俊杰 梓萱 宇航 诗琪 明轩 一诺 天宇 "
    "若曦 志强 秀英 海涛 静 磊 娜 勇 芳 婷婷 晨阳 嘉怡 子墨 书瑶 鹏飞 慧敏 国栋 春梅 立新"
).split()
ZH_KIDS = "乐乐 朵朵 豆豆 明明 甜甜 阳阳 点点 贝贝 果果 多多 小宇 小雨 丁丁 妞妞 壮壮 球球".split()
ZH_CITIES = (
    "杭州 成都 西安 南京 苏州 青岛 大连 厦门 昆明 长沙 武汉 重庆 天津 宁波 合肥 福州 济南 郑州 "
    "兰州 贵阳 南昌 太原 哈尔滨 沈阳 无锡 扬州 桂林 洛阳 绍兴 泉州 珠海 烟台"
).split()
ZH_COMMUNITIES = (
    "阳光 幸福 和平 春华 翠苑 文化 梧桐 东湖 西园 南山 北苑 金桥 红星 绿洲 新村 枫林".split()
)
ZH_ACTIVITIES = (
    ("读书分享会", "阅读"), ("垃圾分类宣传活动", "垃圾分类"), ("义诊活动", "健康知识"),
    ("亲子运动会", "运动"), ("书法展览", "传统文化"), ("消防安全演练", "消防安全"),
    ("旧物交换集市", "节约资源"), ("植树活动", "环境保护"), ("老年人智能手机培训班", "智能手机"),
    ("邻里美食节", "邻里交流"), ("儿童绘画比赛", "艺术"), ("防诈骗知识讲座", "防诈骗"),
    ("社区音乐会", "音乐"), ("科普知识展", "科学知识"),
)  # fmt: skip
ZH_VENUES = (
    "社区广场 文化活动中心 社区服务中心 小区花园 市民公园 街道礼堂 社区图书室 体育馆".split()
)
ZH_ANIMALS = "小兔子 小松鼠 小狐狸 小熊 小鸭子 小刺猬 小猴子 小山羊 小花猫 小黄狗 小乌龟 小鹿 小老鼠 小青蛙".split()
ZH_ANIMAL_NAMES = "豆豆 团团 毛毛 花花 跳跳 乖乖 圆圆 笨笨 灰灰 点点 皮皮 闹闹".split()
ZH_FOREST = "大森林 小山坡 竹林 小河边 山谷 草原 果园 花园".split()
ZH_SEASONS = (
    ("春天", "柳树发出了嫩绿的新芽", "桃花和杏花开满了山坡", "燕子从南方飞回来了"),
    ("夏天", "池塘里的荷花开了", "知了在树上不停地叫着", "傍晚的风带来一丝凉意"),
    ("秋天", "田野里的稻子变得金黄", "枫叶红得像一团火", "果园里挂满了苹果和梨"),
    ("冬天", "北风呼呼地吹着", "屋顶上落了一层白白的雪", "湖面结了一层薄薄的冰"),
)  # fmt: skip
ZH_JOBS = (
    ("快递员", "每天骑着电动车穿梭在大街小巷"), ("乡村教师", "在山里的小学教了很多年书"),
    ("公交车司机", "每天早上五点就要出车"), ("社区医生", "常常上门为老人量血压"),
    ("环卫工人", "天不亮就开始清扫街道"), ("面包师", "每天凌晨三点开始揉面"),
    ("图书管理员", "把每一本书都整理得整整齐齐"), ("消防员", "随时准备出发去救火"),
    ("果农", "把一生都献给了山上的果园"), ("修鞋师傅", "在街角摆了三十年的修鞋摊"),
)  # fmt: skip
ZH_WEEKDAYS = "一 二 三 四 五 六 日".split()
ZH_WEATHER = "晴 多云 小雨 阴 大风 小雪 晴转多云".split()
ZH_FOODS = "饺子 包子 面条 糖葫芦 月饼 汤圆 烤红薯 馄饨 煎饼 米线 豆花 粽子".split()
ZH_SIGHTS = "古城墙 老街 博物馆 古寺 夜市 江边公园 观景台 石板桥 植物园 老码头 古镇 美术馆".split()
ZH_PATHS = (
    "湖边的小路 老街 河堤 林荫道 江边的步道 田间小路 石板路 山间小道 小区的花园 校园的操场".split()
)


def _zh_person(rng: random.Random) -> str:
    return rng.choice(ZH_SURNAMES) + rng.choice(ZH_GIVEN)


def _zh_ctx(rng: random.Random) -> dict[str, str]:
    act, topic = rng.choice(ZH_ACTIVITIES)
    season = rng.choice(ZH_SEASONS)
    job, job_desc = rng.choice(ZH_JOBS)
    a1, a2 = rng.sample(ZH_ANIMALS, 2)
    n1, n2 = rng.sample(ZH_ANIMAL_NAMES, 2)
    s1, s2, s3 = rng.sample(ZH_SIGHTS, 3)
    path1, path2 = rng.sample(ZH_PATHS, 2)
    return {
        "city": rng.choice(ZH_CITIES),
        "comm": rng.choice(ZH_COMMUNITIES),
        "act": act,
        "topic": topic,
        "venue": rng.choice(ZH_VENUES),
        "month": str(rng.randrange(1, 13)),
        "day": str(rng.randrange(1, 29)),
        "year": str(rng.randrange(2015, 2025)),
        "n": str(rng.randrange(3, 60) * 10),
        "k": str(rng.randrange(3, 20)),
        "p1": _zh_person(rng),
        "p2": _zh_person(rng),
        "p3": _zh_person(rng),
        "kid": rng.choice(ZH_KIDS),
        "a1": a1,
        "a2": a2,
        "n1": n1,
        "n2": n2,
        "forest": rng.choice(ZH_FOREST),
        "season": season[0],
        "sc1": season[1],
        "sc2": season[2],
        "sc3": season[3],
        "job": job,
        "job_desc": job_desc,
        "years": str(rng.randrange(5, 35)),
        "wd": rng.choice(ZH_WEEKDAYS),
        "weather": rng.choice(ZH_WEATHER),
        "food": rng.choice(ZH_FOODS),
        "s1": s1,
        "s2": s2,
        "s3": s3,
        "path1": path1,
        "path2": path2,
        "t1": str(rng.randrange(8, 36)),
        "t2": str(rng.randrange(0, 8)),
        "age": str(rng.randrange(62, 90)),
        "school": f"{rng.choice(ZH_CITIES)}市第{rng.choice('一二三四五六七八九十')}中学",
        "fam": rng.choice(["爸爸妈妈", "爷爷奶奶", "外公外婆", "表哥", "好朋友", "同学们"]),
    }


def _zh_community(w: _Writer) -> list[str]:
    p1 = _zpara(
        w.s(
            "{month}月{day}日[上午|下午|晚上]，{city}市{comm}社区在{venue}举办了一场{act}。",
            "近日，{city}市{comm}社区举办了{act}，[吸引了|迎来了]不少居民[参加|前来参与]。",
            "[为了|为]进一步[普及|宣传]{topic}，{city}市{comm}社区于{month}月{day}日开展了{act}。",
        ),
        w.s(
            "活动[吸引了|迎来了]{n}[多|余]名居民参加，现场气氛[十分热烈|热闹非凡|温馨融洽]。",
            "[当天|活动当天]虽然[天气炎热|下着小雨|寒风阵阵]，但前来参加的居民仍然[络绎不绝|热情高涨]。",
            "参加活动的既有[白发苍苍的老人|退休的老党员|年轻的上班族]，也有[活泼可爱的孩子|带着孩子的家长|附近学校的学生]。",
        ),
    )
    p2 = _zpara(
        w.some(
            2,
            "社区工作人员{p1}[介绍说|告诉记者]：“我们希望通过这次活动，让大家[更加了解{topic}|感受到社区的温暖|养成良好的生活习惯]。”",
            "[活动现场|现场]，志愿者们[耐心地|认真地]为居民[讲解|示范|答疑]，[不少人|许多居民]听得[十分认真|津津有味]。",
            "[最受欢迎的是|让人印象最深的是][互动问答环节|现场体验区|孩子们的表演]，[掌声|笑声]一阵接着一阵。",
            "[据统计|据了解]，活动共[发放宣传资料|接待居民咨询][一百|两百|三百|四百]多[份|次]。",
        ),
    )
    p3 = _zpara(
        w.s(
            "今年{age}岁的居民{p2}[高兴地说|笑着说|感慨地说]：“[这样的活动很有意义|以后这样的活动要多办|我学到了不少新东西]，[下次还要来|我会告诉邻居们|真是办到了我们心坎上]。”",
            "带着孩子参加活动的{p2}说：“孩子[玩得很开心|学到了很多|回家还要讲给爷爷听]，[这样的活动很有意义|希望以后多组织这样的活动]。”",
        ),
        w.s(
            "据了解，{comm}社区今年已经举办了{k}场类似的活动，[下一步|接下来]还将[继续丰富活动内容|走进更多家庭|联合周边学校共同开展]。",
            "社区负责人表示，[今后|下一步]将[定期举办此类活动|听取居民意见，不断改进服务]，让居民[在家门口享受便利|生活得更加舒心]。",
        ),
    )
    return [p1, p2, p3]


_ZH_WEATHER_KINDS = {
    "cold": (
        "受[强|较强]冷空气影响，",
        "出现一次明显降温过程，[最大|局地]降温幅度可达[8|10|12]摄氏度",
        "[明天夜间到后天|周三前后][将有|可能出现][大风降温|雨夹雪|霜冻]，[部分山区|局部地区]还可能[有道路结冰|出现冰冻]",
        "[市民|广大市民]出门[要注意添衣保暖|最好戴上帽子和手套]",
        "[农户|种植户]要[提前做好防冻准备|给大棚蔬菜加盖保温膜]",
        "[老人和孩子|体质较弱的人群]要[注意预防感冒|减少清晨外出]",
    ),
    "rain": (
        "受暖湿气流影响，",
        "有一次较强降雨过程，[累计降雨量|部分地区降雨量]可能超过[50|80|100]毫米",
        "[明天下午到夜间|周四白天][将有|可能出现][中到大雨|短时雷阵雨|暴雨]，[局部地区|部分低洼地段]还可能[出现积水|伴有雷电和大风]",
        "[市民|广大市民]出门[最好随身携带雨具|尽量避开低洼路段]",
        "[农户|农技人员][要及时清理沟渠，做好排水|要抓紧时间抢收已经成熟的作物]",
        "[交通管理部门|交警部门]提示，雨天路滑，[驾驶员|司机朋友们]要[减速慢行|保持安全车距]",
    ),
    "hot": (
        "受副热带高压控制，",
        "以晴热天气为主，[最高气温|午后气温]将持续在[35|36|37]摄氏度以上",
        "[本周后期|周末前后]还可能出现[今年以来最强的高温天气|午后雷阵雨]，[体感温度|地表温度][会更高|可能超过40摄氏度]",
        "[市民|广大市民][要做好防晒措施|尽量避开中午前后外出]",
        "[户外工作人员|建筑工人]要[合理安排作息时间|注意防暑降温]",
        "[老人和孩子|体质较弱的人群]要[多喝温水|注意补充水分]，[不要长时间待在空调房里|防止中暑]",
    ),
}


def _zh_weather(w: _Writer) -> list[str]:
    kind = w.rng.choice(sorted(_ZH_WEATHER_KINDS))
    cause, trend, detail, advice1, advice2, advice3 = _ZH_WEATHER_KINDS[kind]
    w.ctx.update(
        cause=_fill(w.rng, cause, w.ctx),
        trend=_fill(w.rng, trend, w.ctx),
        detail=_fill(w.rng, detail, w.ctx),
    )
    w.ctx["month"] = str(
        w.rng.choice(
            {"cold": [11, 12, 1, 2, 3], "rain": [4, 5, 6, 7, 8, 9], "hot": [6, 7, 8]}[kind]
        )
    )
    if kind == "rain":
        w.ctx["t1"] = str(w.rng.randrange(16, 31))
        w.ctx["t2"] = str(int(w.ctx["t1"]) - w.rng.randrange(4, 9))
    elif kind == "hot":
        w.ctx["t1"] = str(w.rng.randrange(35, 39))
        w.ctx["t2"] = str(w.rng.randrange(24, 29))
    elif kind == "cold":
        w.ctx["t1"] = str(w.rng.randrange(3, 12))
        w.ctx["t2"] = w.rng.choice(["零下3", "零下1", "0", "2"])
    p1 = _zpara(
        w.s(
            "{city}市气象台{month}月{day}日发布消息，{cause}[预计|预报]未来三天[全市|本市大部分地区]将{trend}。",
            "记者从{city}市气象部门[获悉|了解到]，{cause}[本周|近期]{city}将{trend}。",
        ),
        w.s(
            "[白天|午后]最高气温[约|在]{t1}摄氏度，[夜间|早晨]最低气温[约|在]{t2}摄氏度[左右|上下]。",
            "[预计|据预测]最高气温{t1}摄氏度，最低气温{t2}摄氏度，[早晚温差较大|昼夜温差明显]。",
        ),
        w.s("[其中|另外]，{detail}。", "气象专家{p1}[介绍|分析]说，{detail}。"),
    )
    p2 = _zpara(
        w.some(
            2,
            "[气象部门|气象专家]提醒，" + advice1 + "。",
            advice2 + "。",
            advice3 + "。",
        ),
        w.maybe(
            0.6,
            "[学校和幼儿园|各相关单位]要[提前做好安全检查|合理安排户外活动]，[确保安全|防止意外发生]。",
        ),
    )
    p3 = _zpara(
        w.s(
            "[预计到|据预测，到][下周|本月下旬|周末]，天气将[逐渐转好|趋于稳定|恢复正常]。",
            "气象台表示，将[密切关注天气变化|及时发布预警信息]，[请市民留意最新预报|提醒大家不要轻信小道消息]。",
        ),
    )
    return [p1, p2, p3]


def _zh_school(w: _Writer) -> list[str]:
    what = w.rng.choice(
        [
            "校园科技节",
            "春季运动会",
            "诗词朗诵比赛",
            "读书月活动",
            "劳动实践周",
            "校园歌手大赛",
            "英语演讲比赛",
            "跳绳比赛",
        ]
    )
    w.ctx["what"] = what
    p1 = _zpara(
        w.s(
            "[近日|日前|上周]，{school}举行了[一年一度的|第{k}届]{what}。",
            "{month}月{day}日，{school}的{what}[正式拉开帷幕|顺利举行|圆满落幕]。",
        ),
        w.s(
            "全校[{n}|一千]多名师生参加了[这次|本次]活动。",
            "[同学们|学生们][早早地|一大早就]来到[操场|礼堂|教室]，[个个|人人][精神饱满|跃跃欲试]。",
        ),
    )
    p2 = _zpara(
        w.some(
            3,
            "[比赛|活动]中，[初二|初一|高一]年级的{p1}同学[表现出色|发挥稳定|一鸣惊人]，获得了[第一名|一等奖|最佳表现奖]。",
            "[老师们|班主任们]在一旁[加油助威|耐心指导]，[场边|台下]的[啦啦队|同学们][喊声震天|掌声不断]。",
            "{p2}老师说：“[举办这样的活动|开展这次活动]，[是为了|目的是]让学生[在实践中成长|发现自己的兴趣|学会合作]。”",
            "[有的同学|一些同学][第一次参加|紧张得手心出汗]，但[在同伴的鼓励下|坚持到了最后]，[收获了满满的自信|觉得非常值得]。",
            "[为了准备这次{what}|赛前]，[很多班级|不少同学][利用课余时间|每天放学后][反复练习|认真排练]，[有的|有些同学]甚至[练到了天黑|周末也不休息]。",
            "[家长们|不少家长]也[来到现场|专门请假赶来]，[用手机记录下|拍下了]孩子们[精彩的瞬间|认真的样子]。",
        ),
    )
    p3 = _zpara(
        w.s(
            "[活动结束后|赛后]，{p3}同学[兴奋地说|开心地说]：“[这次经历我会一直记得|我明年还要参加|我交到了好几个新朋友]！”",
            "[学校负责人|校长]表示，[今后|以后]还会[举办更多形式多样的活动|把这项活动坚持办下去]。",
        ),
    )
    return [p1, p2, p3]


def _zh_fairy(w: _Writer) -> list[str]:
    p1 = _zpara(
        w.s(
            "从前，在[一片|一座][{forest}|美丽的{forest}]里，住着一只[可爱的|调皮的|胆小的|善良的]{a1}，它的名字叫{n1}。",
            "很久很久以前，{forest}旁边有一个[小小的|温暖的]家，家里住着{a1}{n1}。",
            "{forest}里有一只{a1}，大家都叫它{n1}。",
        ),
        w.s(
            "{n1}[最喜欢|每天都喜欢][唱歌|采蘑菇|在草地上打滚|看天上的云]。",
            "{n1}[什么都好|聪明又勤快]，就是[有点儿粗心|太爱睡懒觉|不太爱和别人分享]。",
        ),
    )
    p2 = _zpara(
        w.s(
            "[有一天|一天早上|一个下雨天]，{n1}[在路上|在河边|在大树下][遇到了|碰见了]{a2}{n2}。",
            "[有一天|一天傍晚]，{a2}{n2}[急急忙忙地|哭着]跑来找{n1}。",
        ),
        w.s(
            "{n2}[着急地|难过地]说：“[我的家被大风吹坏了|我找不到回家的路了|我的食物都被雨水冲走了]，[怎么办呀|你能帮帮我吗]？”",
            "原来，{n2}[不小心掉进了一个坑里|的[篮子|小车]坏了|迷路了]，[正急得团团转|怎么也想不出办法]。",
        ),
    )
    p3 = _zpara(
        w.s(
            "{n1}[想了想|眨了眨眼睛|拍了拍胸脯]，说：“[别怕|别着急]，我来帮你！”",
            "{n1}[二话不说|连忙|立刻]跑过去帮忙。",
        ),
        w.s(
            "它[找来|搬来][树枝和干草|长长的藤条|一块大木板]，[忙了整整一个下午|费了好大的劲]，[终于|总算]把事情办好了。",
            "[它们|两个好朋友]一起[想办法|动手]，[没过多久|很快]问题就解决了。",
        ),
    )
    p4 = _zpara(
        w.s(
            "{n2}[高兴得跳了起来|感动地说]：“谢谢你，{n1}！”",
            "{n2}[笑了|开心极了]，送给{n1}[一篮红红的苹果|一朵漂亮的小花|一颗亮晶晶的石头]。",
        ),
        w.s(
            "从那以后，{n1}和{n2}成了[最好的朋友|形影不离的好伙伴]。",
            "{n1}明白了，帮助别人[是一件快乐的事|自己也会很快乐]。",
            "[{forest}里的|周围的]小动物们[都|也]夸{n1}是个[热心肠|好孩子]。",
        ),
    )
    return [p1, p2, p3, p4]


def _zh_essay(w: _Writer) -> list[str]:
    p1 = _zpara(
        w.s(
            "{season}[来了|悄悄地来了|又到了]。",
            "[不知不觉|转眼之间]，{season}[已经|就]到了。",
        ),
        w.some(2, "{sc1}。", "{sc2}。", "{sc3}。"),
        w.maybe(
            0.7,
            "[小区里|路边][的孩子们|的老人们][在|正在][追逐嬉戏|散步聊天|放风筝]，[脸上|眼里]满是[笑容|快乐]。",
            "[整个城市|村子][仿佛|好像]换上了一件新衣裳。",
        ),
    )
    p2 = _zpara(
        w.s(
            "[清晨|傍晚|午后]，我[沿着|顺着]{path1}慢慢地走着。",
            "[周末|星期天]，我[一个人|和{fam}]去{path1}散步。",
        ),
        w.s(
            "[空气|风里]带着[泥土|青草|桂花|炊烟]的[气息|味道]，[让人|叫人]觉得[格外|特别][舒服|亲切|安心]。",
            "[远处|路边]传来[孩子们的笑声|小贩的吆喝声|几声清脆的鸟叫]，[一切都显得那么|整个世界都变得][安静|温柔|美好]。",
        ),
        w.maybe(
            0.7,
            "我想起了小时候，[外婆|奶奶|妈妈]常常[带我|牵着我的手]走过这里，[给我买{food}|给我讲故事|教我认路边的野花]。",
        ),
    )
    p3 = _zpara(
        w.s(
            "[如今|现在]，[很多东西都变了|城市越来越大了|我已经长大了]，可是{season}的{path2}[还是|依旧]那么[美|熟悉]。",
            "[时间过得真快|岁月匆匆]，但这份[安静|美好]一直留在我的心里。",
        ),
        w.maybe(
            0.8,
            "[城里的生活|每天的学习和工作][忙忙碌碌|节奏很快]，[我们常常|很多人][忘了抬头看看天空|顾不上欣赏身边的风景]。",
            "[有时候|很多时候]，我们[总是急着赶路|只顾着往前走]，[却忘了|忽略了][路边的花开了|季节已经悄悄改变]。",
        ),
        w.s(
            "我[想|觉得]，[生活中的美好|幸福]，[往往就藏在|其实就在]这些[平凡的日子|小小的瞬间]里。",
            "[愿|希望]每一个{season}，[我们都能|大家都能][停下脚步|放慢脚步]，看看身边的风景。",
        ),
    )
    return [p1, p2, p3]


def _zh_diary(w: _Writer) -> list[str]:
    head = w.s("{month}月{day}日 星期{wd} {weather}")
    p1 = _zpara(
        w.s(
            "今天是[一个难忘的日子|星期{wd}|个好天气]。",
            "今天[早上|一大早]，[妈妈|爸爸|奶奶]就把我叫醒了。",
        ),
        w.s(
            "[我们|我和{fam}]去了{s1}，[那里|路上][人很多|风景很美]。",
            "[上午|下午]，我[和同学们|和{fam}]一起去[公园|图书馆|郊外]玩。",
        ),
    )
    p2 = _zpara(
        w.some(
            3,
            "[我们|我][看到了|发现了][一只小鸟在树上搭窝|一片金黄的油菜花|一条弯弯的小溪]。",
            "中午我们吃了{food}，[味道好极了|我一口气吃了一大碗]。",
            "[{kid}|同桌{kid}]给我讲了一个[笑话|故事]，我[笑得肚子都疼了|听得入了迷]。",
            "[我学会了骑自行车，虽然摔了一跤|今天我第一次包饺子，虽然包得歪歪扭扭|我学会了放风筝，虽然线缠住了好几次|今天我第一次下水游泳，虽然一开始有点害怕]，但[最后还是成功了|我没有放弃]。",
            "回家的路上[下起了小雨|看到了彩虹|遇见了我的老师]。",
            "[我们|我和{kid}]还[比赛谁跑得快，结果我输了|一起捉蜻蜓，最后大家都累得坐在地上|在草地上打滚，衣服都弄脏了]。",
            "[妈妈|爸爸]说，[只要认真去做|做事要有耐心]，[就没有学不会的事|什么都能做好]。",
        ),
    )
    p3 = _zpara(
        w.s(
            "[今天|这一天][过得真开心|真有意义]，[我希望|真希望][每天都像今天一样|明天也这么快乐]。",
            "[晚上|睡觉前]，我把今天的事[讲给{fam}听|画成了一幅画]，[大家都笑了|心里甜甜的]。",
        ),
    )
    return [head, p1, p2, p3]


def _zh_profile(w: _Writer) -> list[str]:
    p1 = _zpara(
        w.s(
            "{p1}是{city}的一名{job}，[已经|至今]干了{years}年。",
            "在{city}，[很多人都认识|不少居民都知道]{job}{p1}。",
        ),
        w.s("{p1}{job_desc}。", "[这些年来|多年来]，{p1}{job_desc}。"),
    )
    p2 = _zpara(
        w.s(
            "[有人问|记者问]{p1}：“[这么多年|日复一日]，[不觉得累吗|你是怎么坚持下来的]？”",
            "[说起|谈到]这份工作，{p1}[笑着说|认真地说]：",
        ),
        w.s(
            "“[累是累|辛苦是辛苦]，可是看到[大家满意的笑容|街坊们信任的眼神]，[心里就踏实了|就觉得一切都值得]。”",
            "“[干一行就要爱一行|把小事做好就是不简单]，[这是我师傅教我的|我一直记着这句话]。”",
        ),
    )
    p3 = _zpara(
        w.some(
            2,
            "[有一年冬天|去年夏天]，{p1}[在工作中|在路上][帮助了一位迷路的老人|捡到了一个装着现金的钱包]，[一直等到|想办法找到了][失主|家属]。",
            "[邻居|同事]{p2}说：“{p1}[这个人实在|特别热心]，[谁家有困难他都会帮忙|大家都信得过]。”",
            "[如今|现在]，{p1}[还带了|又收了]{k}个[徒弟|年轻人]，把[经验|手艺]一点一点地传下去。",
            "[在|工作之余]，{p1}[喜欢|最大的爱好是][写毛笔字|养花|和孙子下象棋]。",
        ),
    )
    p4 = _zpara(
        w.s(
            "[对于未来|说到以后]，{p1}[说|表示]：“[只要身体允许|能干一天]，我就[继续干下去|一直干下去]。”",
            "[平凡的岗位|普普通通的工作]，[因为有了|正是有了]这样的坚守，[才变得不平凡|让城市更加温暖]。",
        ),
    )
    return [p1, p2, p3, p4]


def _zh_travel(w: _Writer) -> list[str]:
    p1 = _zpara(
        w.s(
            "[去年|前年]{season}，我和{fam}去了{city}。",
            "[今年|这个]{season}，我[终于|第一次]去了[一直想去的|向往已久的]{city}。",
        ),
        w.s(
            "[我们|一路上][坐高铁|坐了一夜的火车|自驾]，[窗外的风景不断变化|大家有说有笑]。",
            "[刚下车|一出站]，[就感受到了|迎面而来的是]这座城市[特有的味道|的热闹|的安静]。",
        ),
    )
    p2 = _zpara(
        w.s(
            "[第一天|第二天]，我们去了{s1}和{s2}。",
            "[我们先去了|第一站是]{s1}，[然后|接着]去了{s2}。",
        ),
        w.s(
            "{s1}[比我想象的还要|真的很][壮观|安静|热闹]，[很多游客都在拍照|一位老爷爷在那里拉二胡]。",
            "[在{s2}，|在那里，]我们[看到了|遇见了][很多当地人在下棋|一群孩子在放风筝|一位卖手工艺品的阿姨]。",
        ),
        w.maybe(
            0.7, "[晚上|傍晚]，我们在{s3}附近吃了当地的{food}，[味道|口感][特别|非常][地道|鲜美]。"
        ),
    )
    mid = _zpara(
        w.maybe(
            0.8,
            "[最让我难忘的是|印象最深的是]{s3}。[那里|在那里][游人不多|人来人往]，[一位老人|一个导游][给我们讲了|告诉我们][这里的历史|一个古老的传说]，[大家听得入了迷|我听得津津有味]。",
            "[有一天|第三天][下起了雨|天气不太好]，我们[就待在|便去了]{s3}，[反而|没想到][别有一番风味|看到了不一样的风景]。",
        ),
    )
    p3 = _zpara(
        w.s(
            "[这次旅行|几天的行程][虽然很短|过得很快]，却[给我留下了深刻的印象|让我爱上了这座城市]。",
            "[离开的时候|回来的路上]，我[心里想|对自己说]：[下次一定还要再来|以后要带更多朋友来看看]。",
        ),
    )
    return [p1, p2, mid, p3]


_ZH_GENRES: tuple[tuple[Callable[[_Writer], list[str]], float], ...] = (
    (_zh_community, 1.0),
    (_zh_weather, 0.7),
    (_zh_school, 1.0),
    (_zh_fairy, 1.2),
    (_zh_essay, 1.0),
    (_zh_diary, 0.9),
    (_zh_profile, 1.0),
    (_zh_travel, 1.0),
)


def _zh_text(rng: random.Random) -> tuple[str, str]:
    gens = [g for g, _ in _ZH_GENRES]
    weights = [wt for _, wt in _ZH_GENRES]
    while True:
        gen = rng.choices(gens, weights)[0]
        w = _Writer(rng, _zh_ctx(rng))
        text = "\n\n".join(p for p in gen(w) if p)
        n = len(re.sub(r"\s", "", text))
        if ZH_CHARS[0] <= n <= ZH_CHARS[1]:
            return text, gen.__name__.removeprefix("_zh_")


# =========================================================================== other languages

_FOREIGN: dict[str, dict[str, tuple[str, ...]]] = {
    "fr": {
        "subj": ("Le petit chat", "Ma grand-mère", "Le boulanger du village", "Une jeune fille",
                 "Notre voisin", "Le vieux pêcheur", "Mon frère", "La maîtresse", "Le facteur"),
        "pred": ("se promène dans le jardin", "prépare une soupe aux légumes",
                 "lit un livre près de la fenêtre", "regarde tomber la pluie",
                 "chante une chanson douce", "part au marché avec un grand panier",
                 "écrit une lettre à un vieil ami", "dort sous un grand arbre",
                 "repeint la porte en bleu", "donne du pain aux canards"),
        "time": ("Ce matin", "Le dimanche", "Chaque soir", "En été", "Après l'école", "Au printemps"),
        "extra": ("Il fait beau et le ciel est tout bleu.", "Le village est calme.",
                  "Tout le monde a l'air content.", "La journée se termine doucement.",
                  "Une petite brise souffle sur la place.", "On entend les cloches de l'église.",
                  "Les enfants rient dans la rue."),
    },
    "de": {
        "subj": ("Der kleine Hund", "Meine Oma", "Der Bäcker", "Ein junges Mädchen", "Unser Nachbar",
                 "Der alte Fischer", "Mein Bruder", "Die Lehrerin", "Der Briefträger"),
        "pred": (("spielt", "im Garten"), ("kocht", "eine Gemüsesuppe"),
                 ("liest", "ein Buch am Fenster"), ("schaut", "dem Regen zu"),
                 ("singt", "ein leises Lied"), ("geht", "mit einem großen Korb auf den Markt"),
                 ("schreibt", "einen Brief an einen alten Freund"), ("schläft", "unter einem Baum"),
                 ("streicht", "die Tür blau an"), ("füttert", "die Enten am Teich")),
        "time": ("Heute Morgen", "Am Sonntag", "Jeden Abend", "Im Sommer", "Nach der Schule", "Im Frühling"),
        "extra": ("Das Wetter ist schön und der Himmel ist blau.", "Im Dorf ist es ruhig.",
                  "Alle sind zufrieden.", "Der Tag geht langsam zu Ende.",
                  "Ein leichter Wind weht über den Platz.", "Man hört die Kirchenglocken.",
                  "Die Kinder lachen auf der Straße."),
    },
    "es": {
        "subj": ("El pequeño gato", "Mi abuela", "El panadero del pueblo", "Una niña", "Nuestro vecino",
                 "El viejo pescador", "Mi hermano", "La maestra", "El cartero"),
        "pred": ("pasea por el jardín", "prepara una sopa de verduras", "lee un libro junto a la ventana",
                 "mira caer la lluvia", "canta una canción suave", "va al mercado con una cesta grande",
                 "escribe una carta a un viejo amigo", "duerme bajo un árbol", "pinta la puerta de azul",
                 "da de comer a los patos"),
        "time": ("Esta mañana", "Los domingos", "Cada tarde", "En verano", "Después de la escuela", "En primavera"),
        "extra": ("Hace buen tiempo y el cielo está azul.", "El pueblo está tranquilo.",
                  "Todos parecen contentos.", "El día termina despacio.",
                  "Una brisa suave sopla en la plaza.", "Se oyen las campanas de la iglesia.",
                  "Los niños se ríen en la calle."),
    },
    "ru": {
        "subj": ("Маленький кот", "Моя бабушка", "Деревенский пекарь", "Молодая девушка", "Наш сосед",
                 "Старый рыбак", "Мой брат", "Учительница", "Почтальон"),
        "pred": ("гуляет в саду", "готовит овощной суп", "читает книгу у окна", "смотрит на дождь",
                 "поёт тихую песню", "идёт на рынок с большой корзиной", "пишет письмо старому другу",
                 "спит под деревом", "красит дверь в синий цвет", "кормит уток у пруда"),
        "time": ("Сегодня утром", "По воскресеньям", "Каждый вечер", "Летом", "После школы", "Весной"),
        "extra": ("Погода хорошая, и небо совсем синее.", "В деревне тихо.", "Все довольны.",
                  "День медленно подходит к концу.", "Лёгкий ветер дует над площадью.",
                  "Слышен звон церковных колоколов.", "Дети смеются на улице."),
    },
    "ja": {
        "subj": ("小さな猫", "私の祖母", "村のパン屋さん", "若い女の子", "となりのおじさん", "年をとった漁師",
                 "私の兄", "先生", "郵便屋さん"),
        "pred": ("庭を散歩しています", "野菜のスープを作っています", "窓のそばで本を読んでいます",
                 "雨が降るのを見ています", "静かな歌を歌っています", "大きなかごを持って市場へ行きます",
                 "古い友だちに手紙を書いています", "木の下で眠っています", "ドアを青くぬっています",
                 "池のアヒルにえさをあげています"),
        "time": ("今朝", "日曜日には", "毎晩", "夏には", "学校のあとで", "春には"),
        "extra": ("天気がよくて、空はとても青いです。", "村はしずかです。", "みんなうれしそうです。",
                  "一日がゆっくりと終わります。", "広場にやさしい風がふいています。",
                  "遠くでお寺の鐘が鳴っています。", "子どもたちが道で笑っています。"),
    },
}  # fmt: skip
FOREIGN_LANGS = ("fr", "de", "es", "ja", "ru")


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:]


def _foreign_sentence(rng: random.Random, lang: str, subj: str, pred: str | tuple[str, str]) -> str:
    time = rng.choice(_FOREIGN[lang]["time"])
    timed = rng.random() < 0.5
    if lang == "ja":
        return f"{time}、{subj}は{pred}。" if timed else f"{subj}は{pred}。"
    if lang == "de":
        verb, rest = pred
        if timed:
            return f"{time} {verb} {_lower_first(subj) if subj.split()[0] in ('Der', 'Die', 'Das', 'Ein', 'Eine', 'Mein', 'Meine', 'Unser') else subj} {rest}."
        return f"{subj} {verb} {rest}."
    if lang == "ru":
        return f"{time} {_lower_first(subj)} {pred}." if timed else f"{subj} {pred}."
    return f"{time}, {_lower_first(subj)} {pred}." if timed else f"{subj} {pred}."


def _foreign_text(rng: random.Random, lang: str) -> str:
    v = _FOREIGN[lang]
    npara = rng.randint(2, 3)
    sizes = [rng.randint(2, 3) for _ in range(npara)]
    subjs = rng.sample(v["subj"], sum(sizes))
    preds = rng.sample(v["pred"], sum(sizes))
    extras = rng.sample(v["extra"], npara)
    paras = []
    for size, extra in zip(sizes, extras, strict=True):
        sents = [_foreign_sentence(rng, lang, subjs.pop(), preds.pop()) for _ in range(size)]
        sents.insert(rng.randrange(len(sents) + 1), extra)
        paras.append(("" if lang == "ja" else " ").join(sents))
    return "\n\n".join(paras)


# =========================================================================== planted problems

BOILERPLATE_LINES: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "head": (
            "Home | About | Contact",
            "Home | News | Stories | About Us | Contact",
            "Skip to main content",
            "Menu",
            "Sign in | Register",
        ),
        "foot": (
            "We use cookies to improve your experience. Accept all cookies",
            "Copyright © 2024 Example Inc. All rights reserved.",
            "Privacy Policy | Terms of Use | Cookie Settings",
            "Subscribe to our newsletter for more stories!",
            "Share this story: Facebook | Twitter | Email",
        ),
    },
    "zh": {
        "head": (
            "首页 | 新闻 | 关于我们 | 联系我们",
            "网站首页 > 新闻中心 > 正文",
            "登录 | 注册",
        ),
        "foot": (
            "版权所有 © 2024 示例网络科技有限公司 保留所有权利",
            "本网站使用Cookie以改善您的浏览体验。接受全部Cookie",
            "京ICP备12345678号",
            "扫一扫，关注我们的微信公众号",
            "责任编辑：王明",
        ),
    },
}


def _boilerplate(rng: random.Random, body: str, lang: str) -> str:
    lines = BOILERPLATE_LINES[lang]
    head = rng.sample(lines["head"], rng.randint(1, 2))
    foot = rng.sample(lines["foot"], rng.randint(1, 3))
    return "\n".join(head) + "\n\n" + body + "\n\n" + "\n".join(foot)


_EN_SPAM_PRODUCTS = (
    "watches", "sunglasses", "phones", "sneakers", "handbags", "vitamins", "laptops",
    "headphones", "perfume", "flights", "hotels", "car insurance", "loans", "diet pills",
)  # fmt: skip
_ZH_SPAM_PRODUCTS = (
    "减肥茶",
    "手机",
    "名牌包",
    "保健品",
    "运动鞋",
    "机票",
    "贷款",
    "化妆品",
    "手表",
    "课程",
)


def _spam(rng: random.Random, lang: str, variant: str) -> str:
    if lang == "en":
        p = rng.choice(_EN_SPAM_PRODUCTS)
        if variant == "repeat_sentence":
            s = rng.choice(
                [
                    f"Best {p} deals of the year are here!",
                    f"Buy cheap {p} online now.",
                    "Click here to win a free prize!",
                    f"Limited offer on {p}, do not miss it!",
                ]
            )
            sep = rng.choice([" ", "\n", " "])
            return sep.join([s] * rng.randint(15, 40))
        if variant == "keyword_stuffing":
            kws = [
                f"cheap {p}",
                f"best {p}",
                f"{p} sale",
                f"buy {p}",
                f"{p} online",
                f"discount {p}",
                f"free {p}",
            ]
            head = f"Cheap {p.title()} - Best {p.title()} - Buy {p.title()} Online"
            words = [rng.choice(kws) for _ in range(rng.randint(40, 90))]
            return head + "\n\n" + " ".join(words)
        if variant == "link_list":
            site = p.replace(" ", "-")
            lines = [
                f"BUY CHEAP {p.upper()} NOW!!! Click here: http://cheap-{site}.example.com/?id={rng.randrange(1000, 9999)}"
                for _ in range(rng.randint(10, 20))
            ]
            return "\n".join(lines)
        word = rng.choice(["free", "win", "money", "cheap", "sale", "click"])
        return " ".join([word] * rng.randint(50, 150))
    p = rng.choice(_ZH_SPAM_PRODUCTS)
    if variant == "repeat_sentence":
        s = rng.choice(
            [f"点击这里，免费领取{p}！", f"最便宜的{p}，限时特价！", "恭喜您中奖了，快来领取！"]
        )
        return rng.choice(["", "\n"]).join([s] * rng.randint(15, 40))
    if variant == "keyword_stuffing":
        kws = [p, f"{p}哪个好", f"最好的{p}", f"{p}价格", f"便宜{p}", f"{p}官网", f"{p}推荐"]
        return f"{p}_{p}价格_{p}哪个好\n\n" + " ".join(
            rng.choice(kws) for _ in range(rng.randint(40, 90))
        )
    if variant == "link_list":
        return "\n".join(
            f"【{p}】特价促销，点击进入：http://www.example.cn/{rng.randrange(1000, 9999)}.html"
            for _ in range(rng.randint(10, 20))
        )
    return " ".join([rng.choice(["免费", "中奖", "点击", "赚钱"])] * rng.randint(50, 150))


SPAM_VARIANTS = ("repeat_sentence", "keyword_stuffing", "link_list", "repeat_word")

_C0 = [chr(c) for c in range(0x00, 0x09)]
CONTROL_MARKS = ("\u200b", "\ufeff", "\u00ad")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _control_chars(rng: random.Random, text: str) -> str:
    tokens = re.split(r"( +)", text)  # words and the runs of spaces between them
    word_idx = [i for i, t in enumerate(tokens) if t.strip()]
    for i in rng.sample(word_idx, max(3, len(word_idx) // 12)):
        tok = tokens[i]
        what = rng.choice(["c0", "ansi", "zwsp", "shy", "c0", "zwsp"])
        if what == "c0":
            tokens[i] = tok + rng.choice(_C0)
        elif what == "ansi":
            tokens[i] = f"\x1b[{rng.choice(['31', '32', '1;33', '34', '0'])}m{tok}\x1b[0m"
        elif what == "zwsp":
            cut = rng.randrange(len(tok) + 1)
            tokens[i] = tok[:cut] + "\u200b" + tok[cut:]
        else:
            cut = rng.randrange(1, len(tok)) if len(tok) > 1 else 1
            tokens[i] = tok[:cut] + "\u00ad" + tok[cut:]
    out = "".join(tokens)
    if rng.random() < 0.5:
        out = "\ufeff" + out
    return out


def _zh_control_chars(rng: random.Random, text: str) -> str:
    chars = list(text)
    idx = sorted(rng.sample(range(len(chars)), max(4, len(chars) // 25)), reverse=True)
    for i in idx:
        what = rng.choice(["c0", "ansi", "zwsp", "shy", "zwsp"])
        if what == "c0":
            chars.insert(i, rng.choice(_C0))
        elif what == "ansi":
            chars[i] = f"\x1b[{rng.choice(['31', '32', '1;33'])}m{chars[i]}\x1b[0m"
        elif what == "zwsp":
            chars.insert(i, "\u200b")
        else:
            chars.insert(i, "\u00ad")
    out = "".join(chars)
    return "\ufeff" + out if rng.random() < 0.5 else out


def strip_planted_controls(text: str) -> str:
    """Undo `control_chars`: drop ANSI escapes, C0 controls 0-8, ZWSP, BOM and soft hyphens."""
    text = ANSI.sub("", text)
    return re.sub("[\x00-\x08\u200b\ufeff\u00ad]", "", text)


def _typographize(text: str) -> str:
    """Straight quotes and apostrophes to curly ones."""
    out: list[str] = []
    open_q = True
    for i, ch in enumerate(text):
        if ch == '"':
            out.append("\u201c" if open_q else "\u201d")
            open_q = not open_q
        elif ch == "'":
            prev = text[i - 1] if i else " "
            out.append("\u2019" if prev.isalnum() else "\u2018")
        else:
            out.append(ch)
    return "".join(out)


def _sloppy_cp1252(data: bytes) -> str:
    """Decode as Windows-1252, with the five undefined bytes passed through as latin-1."""
    return "".join(
        chr(b) if b in (0x81, 0x8D, 0x8F, 0x90, 0x9D) else bytes([b]).decode("cp1252") for b in data
    )


def _mojibake(text: str, variant: str) -> str:
    data = text.encode("utf-8")
    return data.decode("latin-1") if variant == "latin-1" else _sloppy_cp1252(data)


_FW_OFFSET = 0xFEE0  # ASCII 0x21-0x7E -> full-width U+FF01-U+FF5E


def _fw(ch: str) -> str:
    return chr(ord(ch) + _FW_OFFSET) if "!" <= ch <= "~" else ch


def _en_mixed_width(rng: random.Random, text: str) -> str:
    chars = list(text)
    for i, ch in enumerate(chars):
        if ch in ",!?;:" and rng.random() < 0.6:
            chars[i] = _fw(ch)
        elif ch.isdigit():
            chars[i] = _fw(ch)
    out = "".join(chars)
    # a few whole words in full-width letters (names, mostly)
    words = re.findall(r"\b[A-Z][a-z]+\b", out)
    for word in rng.sample(words, min(len(words), rng.randint(1, 3))):
        out = out.replace(
            word, "".join(_fw(c) for c in (word.upper() if rng.random() < 0.5 else word)), 1
        )
    if out == text:
        out = out.replace(".", "\uff0e", 1)
    return out


ZH_TO_ASCII_PUNCT = {
    "，": ",",
    "。": ".",
    "！": "!",
    "？": "?",
    "：": ":",
    "；": ";",
    "（": "(",
    "）": ")",
}


def _zh_mixed_width(rng: random.Random, text: str) -> str:
    out = []
    for ch in text:
        if ch in ZH_TO_ASCII_PUNCT and rng.random() < 0.6:
            out.append(ZH_TO_ASCII_PUNCT[ch])
        elif ch.isascii() and ch.isdigit():
            out.append(_fw(ch))
        else:
            out.append(ch)
    return "".join(out)


def _case_variant(rng: random.Random, text: str) -> str:
    return text.lower() if rng.random() < 0.6 else text.upper()


def _space_variant(rng: random.Random, text: str) -> str:
    out = re.sub(
        " ", lambda _: " " if rng.random() < 0.8 else rng.choice(["  ", "\t", "   "]), text
    )
    out = out.replace("\n\n", rng.choice(["\n", "\n\n\n", "\n \n"]))
    return rng.choice(["", "  ", "\n"]) + out + rng.choice([" ", "\n", "\n\n", "   "])


def _zh_space_variant(rng: random.Random, text: str) -> str:
    out = []
    for ch in text:
        out.append(ch)
        if ch in "，。！？" and rng.random() < 0.5:
            out.append(rng.choice([" ", "  ", "\n"]))
    return "".join(out).replace("\n\n", "\n") + " \n"


_PUNCT = re.compile(r"[.,!?;:\"'\-，。！？；：、“”‘’]")


def _punct_variant(rng: random.Random, text: str) -> str:
    if rng.random() < 0.5:
        return _PUNCT.sub("", text)
    return text.replace(".", "!").replace("。", "！")


# near duplicates -------------------------------------------------------------------------

_EN_FILLERS = (
    "very really then also just little still quietly happily suddenly soon again now there".split()
)
_ZH_FILLERS = list("的了很也都就还又在着")


def shingles(text: str, lang: str, n: int = 3) -> set[tuple[str, ...]] | set[str]:
    """Word n-grams (lower-cased words) for spaced scripts, character n-grams for zh/ja."""
    if lang in ("zh", "ja"):
        s = re.sub(r"\s", "", text)
        return {s[i : i + n] for i in range(max(1, len(s) - n + 1))}
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _perturb_en(rng: random.Random, text: str, rate: float) -> str:
    paras = [p.split(" ") for p in text.split("\n\n")]
    slots = [(i, j) for i, p in enumerate(paras) for j in range(len(p))]
    k = max(1, round(rate * len(slots)))
    vocab = [w for p in paras for w in p if w.isalpha() and w.islower()]
    for i, j in sorted(rng.sample(slots, k), reverse=True):
        op = rng.choice(["ins", "del", "sub"])
        word = paras[i][j]
        if op == "del" and len(paras[i]) > 1 and word.isalpha():
            del paras[i][j]
        elif op == "sub" and word:
            core = word.rstrip(".,!?\"'")
            tail = word[len(core) :]
            new = rng.choice(vocab or _EN_FILLERS)
            paras[i][j] = (new.capitalize() if core[:1].isupper() else new) + tail
        else:
            paras[i].insert(j, rng.choice(_EN_FILLERS))
    return "\n\n".join(" ".join(p) for p in paras)


def _perturb_zh(rng: random.Random, text: str, rate: float) -> str:
    chars = list(text)
    slots = [i for i, c in enumerate(chars) if not c.isspace()]
    k = max(1, round(rate * len(slots)))
    pool = [c for c in chars if "\u4e00" <= c <= "\u9fff"]
    for i in sorted(rng.sample(slots, k), reverse=True):
        op = rng.choice(["ins", "del", "sub"])
        if op == "del":
            del chars[i]
        elif op == "sub":
            chars[i] = rng.choice(pool)
        else:
            chars.insert(i, rng.choice(_ZH_FILLERS))
    return "".join(chars)


def _near_dup(rng: random.Random, text: str, lang: str) -> str:
    perturb = _perturb_zh if lang == "zh" else _perturb_en
    base = shingles(text, lang)
    lo, hi = NEAR_DUP_JACCARD
    rate = rng.uniform(0.01, 0.04)
    for _ in range(60):
        cand = perturb(rng, text, rate)
        j = jaccard(base, shingles(cand, lang))
        if lo <= j <= hi and cand != text:
            return cand
        rate *= 0.8 if j < lo else 1.25
    raise RuntimeError("could not make a near duplicate in the Jaccard band")  # pragma: no cover


NEAR_EMPTY: tuple[tuple[str, str], ...] = (
    ("", "und"),
    ("   ", "und"),
    ("\n\n", "und"),
    ("\t \n", "und"),
    ("ok", "en"),
    ("Hello", "en"),
    ("test", "en"),
    ("N/A", "en"),
    ("lol", "en"),
    ("*****", "und"),
    ("-----", "und"),
    ("...", "und"),
    ("好", "zh"),
    ("。", "zh"),
)


# =========================================================================== assembly


def sample_corpus(seed: int = 0) -> list[SampleDoc]:
    """The demo corpus, in order, with what was planted in each document."""
    rng = random.Random(seed)
    seen: set[str] = set()

    def fresh(lang: str) -> str:
        while True:
            text, _genre = (_zh_text if lang == "zh" else _en_text)(rng)
            if text not in seen:
                seen.add(text)
                return text

    # items: (doc, cluster) where cluster is None or the id of the original's cluster
    items: list[tuple[SampleDoc, int | None]] = []
    clean: dict[str, list[int]] = {"en": [], "zh": []}
    for lang in ("en", "zh"):
        for _ in range(KIND_COUNTS["clean"][lang]):
            clean[lang].append(len(items))
            items.append((SampleDoc(fresh(lang), lang, "clean"), None))

    # originals for duplicates are distinct clean documents
    pool = {lang: rng.sample(clean[lang], len(clean[lang])) for lang in clean}

    def original(lang: str) -> int:
        idx = pool[lang].pop()
        items[idx] = (items[idx][0], idx)
        return idx

    for lang in ("en", "zh"):
        need = KIND_COUNTS["exact_dup"][lang]
        variants = ["identical", "identical", "case", "whitespace", "punctuation"]
        if lang == "zh":
            variants = ["identical", "identical", "whitespace", "punctuation"]
        while need:
            idx = original(lang)
            src = items[idx][0].text
            for _ in range(min(need, rng.randint(1, 3))):
                v = rng.choice(variants)
                if v == "identical":
                    text = src
                elif v == "case":
                    text = _case_variant(rng, src)
                elif v == "whitespace":
                    text = (_zh_space_variant if lang == "zh" else _space_variant)(rng, src)
                else:
                    text = _punct_variant(rng, src)
                items.append((SampleDoc(text, lang, "exact_dup", v, clean_text=src), idx))
                need -= 1

        need = KIND_COUNTS["near_dup"][lang]
        while need:
            idx = original(lang)
            src = items[idx][0].text
            copies = rng.randint(2, 4)
            if need - copies < 2:
                copies = need
            for _ in range(copies):
                text = _near_dup(rng, src, lang)
                items.append((SampleDoc(text, lang, "near_dup", clean_text=src), idx))
                need -= 1

    for lang in ("en", "zh"):
        for _ in range(KIND_COUNTS["boilerplate"][lang]):
            body = fresh(lang)
            items.append(
                (
                    SampleDoc(_boilerplate(rng, body, lang), lang, "boilerplate", clean_text=body),
                    None,
                )
            )
        for i in range(KIND_COUNTS["spam"][lang]):
            v = SPAM_VARIANTS[i % len(SPAM_VARIANTS)]
            items.append((SampleDoc(_spam(rng, lang, v), lang, "spam", v), None))
        for _ in range(KIND_COUNTS["control_chars"][lang]):
            body = fresh(lang)
            text = (_zh_control_chars if lang == "zh" else _control_chars)(rng, body)
            items.append((SampleDoc(text, lang, "control_chars", clean_text=body), None))
        for i in range(KIND_COUNTS["mojibake"][lang]):
            while True:
                body = fresh(lang)
                if lang == "en":
                    body = _typographize(body)
                if not body.isascii():
                    break
            v = "latin-1" if i % 4 == 3 else "cp1252"
            items.append(
                (SampleDoc(_mojibake(body, v), lang, "mojibake", v, clean_text=body), None)
            )
        for i in range(KIND_COUNTS["mixed_width"][lang]):
            body = fresh(lang)
            while lang == "zh" and i % 3 != 2 and not re.search(r"\d", body):
                body = fresh(lang)  # most get numbers, to show full-width digits
            text = (_zh_mixed_width if lang == "zh" else _en_mixed_width)(rng, body)
            items.append((SampleDoc(text, lang, "mixed_width", clean_text=body), None))

    for i in range(KIND_COUNTS["foreign"]["xx"]):
        lang = FOREIGN_LANGS[i % len(FOREIGN_LANGS)]
        items.append((SampleDoc(_foreign_text(rng, lang), lang, "foreign"), None))
    for text, lang in NEAR_EMPTY:
        items.append((SampleDoc(text, lang, "near_empty"), None))

    # Deterministic shuffle; then within each duplicate cluster, the original takes the
    # earliest of the cluster's slots so that it comes before all of its copies.
    order = list(range(len(items)))
    rng.shuffle(order)
    slots: dict[int, list[int]] = {}
    for pos, item_idx in enumerate(order):
        cluster = items[item_idx][1]
        if cluster is not None:
            slots.setdefault(cluster, []).append(pos)
    for cluster, positions in slots.items():
        first = positions[0]
        here = order.index(cluster)
        order[first], order[here] = order[here], order[first]
    position_of = {item_idx: pos for pos, item_idx in enumerate(order)}

    docs: list[SampleDoc] = []
    for item_idx in order:
        doc, cluster = items[item_idx]
        if doc.kind in ("exact_dup", "near_dup"):
            assert cluster is not None
            doc = SampleDoc(
                doc.text, doc.lang, doc.kind, doc.variant, position_of[cluster], doc.clean_text
            )
        docs.append(doc)
    return docs


def sample_documents(seed: int = 0) -> Iterator[Record]:
    """The built-in demo corpus: ~630 English and Chinese documents (~0.4 MB) with planted problems.

    Deterministic for a seed (same seed: identical texts in the same order). `meta` carries
    `lang` ("en", "zh", "fr", "de", "es", "ja", "ru", or "und" for blank / symbol-only
    documents) and `kind` (one of `KINDS`), plus `variant` where a kind has several, and
    `origin` (the position of the clean original) for exact and near duplicates.
    """
    for position, doc in enumerate(sample_corpus(seed)):
        yield Record(doc.text, position, doc.meta)
