"""The built-in chat sample behind `nonllama sft --data sample`: a few hundred conversations,
English and Chinese, written by templates (nothing copied from anywhere), so `make sft` runs
offline after `make all`.

Question and answer pairs about tiny stories in the style of the text sample (its names,
animals, things and places: "Lily found a red kite in the garden. ... Who found the kite?"),
and simple facts a small model can learn exactly: sums, the day after a day, opposites, what
animals say, colours of things, counting. About a third of the conversations open with a
system message, about a third have two or three exchanges (follow-up questions). The same seed
gives the same conversations in the same order; every one is a valid conversation (user and
assistant alternate, the assistant last, no reply empty).
"""

from __future__ import annotations

import random

from nonllama.pipeline.sample import (
    EN_ANIMALS,
    EN_BOYS,
    EN_COLORS,
    EN_GIRLS,
    EN_OBJECTS,
    EN_PLACES,
    ZH_KIDS,
)

CONVERSATIONS = 480
EN_SHARE = 0.6

EN_SYSTEMS = (
    "You are a helpful assistant. Answer in one short sentence.",
    "You are a friendly assistant for children. Keep answers short and kind.",
    "Answer the question briefly and correctly.",
)
ZH_SYSTEMS = ("你是一个乐于助人的助手，回答要简短。", "你是一个给小朋友讲故事的助手，回答简单明了。", "请简短、准确地回答问题。")

EN_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
ZH_DAYS = "一 二 三 四 五 六 日".split()
EN_NUMBERS = "zero one two three four five six seven eight nine ten".split()
EN_OPPOSITES = (("big", "small"), ("hot", "cold"), ("up", "down"), ("day", "night"), ("fast", "slow"),
                ("happy", "sad"), ("open", "closed"), ("light", "dark"), ("old", "new"), ("wet", "dry"))
ZH_OPPOSITES = (("大", "小"), ("多", "少"), ("高", "矮"), ("长", "短"), ("快", "慢"), ("冷", "热"),
                ("上", "下"), ("黑", "白"), ("早", "晚"), ("开", "关"))
EN_SOUNDS = (("dog", "woof"), ("cat", "meow"), ("cow", "moo"), ("duck", "quack"), ("sheep", "baa"),
             ("owl", "hoot"), ("pig", "oink"), ("frog", "ribbit"), ("horse", "neigh"))
ZH_SOUNDS = (("小狗", "汪汪"), ("小猫", "喵喵"), ("小鸭子", "嘎嘎"), ("小鸡", "叽叽"), ("青蛙", "呱呱"),
             ("老牛", "哞哞"), ("小羊", "咩咩"))
EN_COLOURS_OF = (("the sky on a clear day", "blue"), ("grass", "green"), ("snow", "white"), ("a banana", "yellow"),
                 ("a ripe tomato", "red"), ("coal", "black"), ("an orange", "orange"))
ZH_COLOURS_OF = (("晴天的天空", "蓝色"), ("小草", "绿色"), ("雪", "白色"), ("香蕉", "黄色"), ("熟了的西红柿", "红色"),
                 ("乌鸦", "黑色"))
ZH_THINGS = "皮球 风筝 钥匙 贝壳 小书 帽子 小船 铃铛 纽扣 小灯笼 小木马 布娃娃".split()
ZH_PLACES = "花园 公园 小河边 沙滩 草地 果园 竹林 操场".split()
ZH_ANIMALS = "小兔子 小松鼠 小狐狸 小熊 小鸭子 小刺猬 小猴子 小花猫".split()
ZH_COLORS = "红色 蓝色 绿色 黄色 紫色 白色".split()


def _en_story(rng: random.Random) -> list[tuple[str, str]]:
    girl = rng.random() < 0.5
    name = rng.choice(EN_GIRLS if girl else EN_BOYS)
    he, his = ("she", "her") if girl else ("he", "his")
    friend = rng.choice([n for n in EN_GIRLS + EN_BOYS if n != name])
    obj, color, place = rng.choice(EN_OBJECTS), rng.choice(EN_COLORS), rng.choice(EN_PLACES)
    species, pet = rng.choice(EN_ANIMALS)
    story = (f"{name} found a {color} {obj} in the {place}. {he.capitalize()} showed it to {his} friend {friend}, "
             f"and a {species} named {pet} watched them.")
    questions = [
        (f"Who found the {obj}?", f"{name} found the {obj}."),
        (f"Where did {name} find the {obj}?", f"In the {place}."),
        (f"What color was the {obj}?", f"It was {color}."),
        (f"Who did {name} show the {obj} to?", f"{name} showed it to {friend}."),
        (f"What kind of animal was {pet}?", f"{pet} was a {species}."),
    ]
    rng.shuffle(questions)
    first, *rest = questions
    return [(f"Read this story: {story}\n{first[0]}", first[1]), *rest]


def _zh_story(rng: random.Random) -> list[tuple[str, str]]:
    kid = rng.choice(ZH_KIDS)
    thing, place, color = rng.choice(ZH_THINGS), rng.choice(ZH_PLACES), rng.choice(ZH_COLORS)
    animal = rng.choice(ZH_ANIMALS)
    story = f"{kid}在{place}捡到了一个{color}的{thing}，一只{animal}跑过来看了看。"
    questions = [
        (f"谁捡到了{thing}？", f"{kid}捡到了{thing}。"),
        (f"{kid}在哪里捡到了{thing}？", f"在{place}。"),
        (f"{thing}是什么颜色的？", f"是{color}的。"),
        ("跑过来的是什么动物？", f"是一只{animal}。"),
    ]
    rng.shuffle(questions)
    first, *rest = questions
    return [(f"读一读这个故事：{story}\n{first[0]}", first[1]), *rest]


def _en_fact(rng: random.Random) -> list[tuple[str, str]]:
    kind = rng.randrange(6)
    if kind == 0:
        a, b, c = rng.randrange(1, 10), rng.randrange(1, 10), rng.randrange(1, 10)
        return [(rng.choice([f"What is {a} plus {b}?", f"How much is {a} + {b}?"]), f"{a} plus {b} is {a + b}."),
                (f"And if you add {c} more?", f"{a + b} plus {c} is {a + b + c}.")]
    if kind == 1:
        i = rng.randrange(7)
        return [(f"What day comes after {EN_DAYS[i]}?", f"{EN_DAYS[(i + 1) % 7]} comes after {EN_DAYS[i]}."),
                (f"And the day before {EN_DAYS[i]}?", f"{EN_DAYS[(i - 1) % 7]} comes before {EN_DAYS[i]}.")]
    if kind == 2:
        word, other = rng.choice(EN_OPPOSITES)
        if rng.random() < 0.5:
            word, other = other, word
        return [(f"What is the opposite of \"{word}\"?", f"The opposite of \"{word}\" is \"{other}\".")]
    if kind == 3:
        animal, sound = rng.choice(EN_SOUNDS)
        return [(f"What does a {animal} say?", f"A {animal} says \"{sound}\".")]
    if kind == 4:
        thing, color = rng.choice(EN_COLOURS_OF)
        return [(f"What color is {thing}?", f"{thing[0].upper() + thing[1:]} is {color}.")]
    start = rng.randrange(1, 6)
    end = start + rng.randrange(2, 5)
    return [(f"Count from {EN_NUMBERS[start]} to {EN_NUMBERS[end]}.",
             ", ".join(n.capitalize() if i == 0 else n for i, n in enumerate(EN_NUMBERS[start:end + 1])) + ".")]


def _zh_fact(rng: random.Random) -> list[tuple[str, str]]:
    kind = rng.randrange(5)
    if kind == 0:
        a, b, c = rng.randrange(1, 10), rng.randrange(1, 10), rng.randrange(1, 10)
        return [(f"{a}加{b}等于几？", f"{a}加{b}等于{a + b}。"), (f"再加{c}呢？", f"{a + b}加{c}等于{a + b + c}。")]
    if kind == 1:
        i = rng.randrange(7)
        return [(f"星期{ZH_DAYS[i]}的后面是星期几？", f"星期{ZH_DAYS[i]}的后面是星期{ZH_DAYS[(i + 1) % 7]}。")]
    if kind == 2:
        word, other = rng.choice(ZH_OPPOSITES)
        if rng.random() < 0.5:
            word, other = other, word
        return [(f"“{word}”的反义词是什么？", f"“{word}”的反义词是“{other}”。")]
    if kind == 3:
        animal, sound = rng.choice(ZH_SOUNDS)
        return [(f"{animal}怎么叫？", f"{animal}{sound}叫。")]
    thing, color = rng.choice(ZH_COLOURS_OF)
    return [(f"{thing}是什么颜色的？", f"{thing}是{color}的。")]


def chat_sample(seed: int = 0) -> list[dict]:
    """The sample's conversations, each {"messages": [...]} in Hugging Face's chat format."""
    rng = random.Random(f"nonllama-chat-sample:{seed}")
    conversations = []
    for _ in range(CONVERSATIONS):
        english = rng.random() < EN_SHARE
        story = rng.random() < 0.5
        exchanges = (_en_story if story else _en_fact)(rng) if english else (_zh_story if story else _zh_fact)(rng)
        turns = 1 if rng.random() < 0.65 else min(len(exchanges), rng.randrange(2, 4))
        messages = []
        if rng.random() < 0.35:
            messages.append({"role": "system", "content": rng.choice(EN_SYSTEMS if english else ZH_SYSTEMS)})
        for question, answer in exchanges[:turns]:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        conversations.append({"messages": messages})
    return conversations
