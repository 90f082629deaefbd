"""Write the demo's small Urdu QA dataset (UQA schema) to demo/data/{train,validation}.jsonl.

Every context is a short paragraph of facts about one person, city or organisation; a question asks
for one of them (or, for unanswerable rows, for a fact the paragraph does not hold). Names and values
are drawn from fixed lists with a fixed seed, and validation paragraphs use combinations that train
never shows, so the held-out score measures whether the model learnt to read, not to remember.

    python demo/make_demo_data.py        # rewrites demo/data/*.jsonl (deterministic)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PEOPLE = [
    "علی", "احمد", "فاطمہ", "عائشہ", "حسن", "زینب", "عمر", "مریم", "بلال", "سارہ", "حمزہ", "نادیہ",
    "کامران", "صبا", "فیصل", "رابعہ", "طارق", "ثنا", "یوسف", "ماہرہ", "جاوید", "نرگس", "شاہد", "کرن",
    "عمران", "شازیہ", "ندیم", "آمنہ", "وقار", "حنا", "سلمان", "فریحہ", "راشد", "سمیرا", "اکبر", "لبنیٰ",
]
SURNAMES = ["خان", "قریشی", "صدیقی", "ملک", "چوہدری", "بٹ", "شیخ", "رضوی", "انصاری", "مرزا", "جعفری", "ہاشمی"]
CITIES = [
    "لاہور", "کراچی", "پشاور", "کوئٹہ", "ملتان", "فیصل آباد", "راولپنڈی", "حیدرآباد", "سیالکوٹ", "گوجرانوالہ",
    "بہاولپور", "سکھر", "ایبٹ آباد", "مردان", "گلگت", "سوات", "چترال", "مظفرآباد", "جہلم", "سرگودھا",
]
PROFESSIONS = [
    "ڈاکٹر", "استاد", "انجینئر", "شاعر", "مصور", "وکیل", "صحافی", "کسان", "سائنسدان", "موسیقار",
    "تاجر", "معمار", "ناول نگار", "پائلٹ", "باورچی", "فوٹوگرافر",
]
FAMOUS_FOR = [
    "اپنی شاعری", "اپنے ناولوں", "اپنی تحقیق", "اپنی تصویروں", "اپنے گیتوں", "اپنی تقریروں", "اپنے کھانوں",
    "اپنی عمارتوں", "اپنی سخاوت", "اپنی ایجادات",
]
RIVERS = ["سندھ", "جہلم", "چناب", "راوی", "ستلج", "کابل", "سوات", "ہنزہ"]
PRODUCTS = ["کپاس", "گندم", "چاول", "آم", "کھیلوں کا سامان", "قالین", "چمڑا", "کھجور", "سنگ مرمر", "شہد"]
ORGS = ["کتب خانہ", "ہسپتال", "مدرسہ", "عجائب گھر", "کتب فروشی", "کارخانہ", "اخبار", "تھیٹر", "باغ", "یونیورسٹی"]
ORG_ADJ = ["قومی", "شہری", "عوامی", "نیا", "پرانا", "مرکزی", "علاقائی", "بڑا"]
SUBJECTS = ["ہم", "وہ", "طلبہ", "محققین", "ہمارے دوست", "اساتذہ"]
OBJECTS = ["اپنے فائن ٹیونڈ سوال و جواب ماڈل", "نئے ڈیٹا سیٹ", "اپنے منصوبے", "اس کتاب", "نئے نظام", "اپنے تجربے"]
ACTIVITIES = ["انفریئنس", "تربیت", "جانچ", "تحقیق", "مرمت", "پیمائش", "تجزیہ", "نظرثانی"]
SEED = {
    "context": "ہم اپنے فائن ٹیونڈ سوال و جواب ماڈل پر جلد ہی انفریئنس چلانے والے ہیں!",
    "question": "ہم کیا کرنے والے ہیں؟",
    "answer": "انفریئنس",
}


def person_facts(rng: random.Random, name: str) -> dict[str, tuple[str, str, str]]:
    """relation -> (sentence with {A} for the answer, question, answer)."""
    year = str(rng.randint(1900, 2005))
    city = rng.choice(CITIES)
    job = rng.choice(PROFESSIONS)
    fame = rng.choice(FAMOUS_FOR)
    kids = rng.choice(["دو", "تین", "چار", "پانچ", "چھ"])
    return {
        "born": (f"{name} {{A}} میں پیدا ہوئے۔", f"{name} کب پیدا ہوئے؟", year),
        "city": (f"{name} کا تعلق {{A}} سے تھا۔", f"{name} کا تعلق کہاں سے تھا؟", city),
        "job": ("وہ پیشے کے لحاظ سے {A} تھے۔", f"{name} کا پیشہ کیا تھا؟", job),
        "fame": (f"{name} نے {{A}} کی وجہ سے شہرت پائی۔", f"{name} نے کیوں شہرت پائی؟", fame),
        "kids": ("ان کے {A} بچے تھے۔", f"{name} کے کتنے بچے تھے؟", kids),
    }


def city_facts(rng: random.Random, city: str) -> dict[str, tuple[str, str, str]]:
    people = str(rng.randint(2, 95))
    river = rng.choice(RIVERS)
    product = rng.choice(PRODUCTS)
    year = str(rng.randint(1100, 1950))
    founder = f"{rng.choice(PEOPLE)} {rng.choice(SURNAMES)}"
    return {
        "pop": (f"{city} کی آبادی {{A}} ہے۔", f"{city} کی آبادی کتنی ہے؟", f"{people} لاکھ"),
        "river": (f"{city} کے قریب {{A}} بہتا ہے۔", f"{city} کے قریب کون سا دریا بہتا ہے؟", f"دریائے {river}"),
        "product": ("یہ شہر {A} کے لیے مشہور ہے۔", f"{city} کس چیز کے لیے مشہور ہے؟", product),
        "founded": (f"{city} کو {{A}} میں بسایا گیا۔", f"{city} کب بسایا گیا؟", year),
        "founder": ("اسے {A} نے بسایا۔", f"{city} کو کس نے بسایا؟", founder),
    }


def org_facts(rng: random.Random, org: str) -> dict[str, tuple[str, str, str]]:
    founder = f"{rng.choice(PEOPLE)} {rng.choice(SURNAMES)}"
    city = rng.choice(CITIES)
    year = str(rng.randint(1850, 2020))
    staff = str(rng.randint(12, 900))
    return {
        "founder": (f"{org} کی بنیاد {{A}} نے رکھی۔", f"{org} کی بنیاد کس نے رکھی؟", founder),
        "where": ("یہ {A} میں واقع ہے۔", f"{org} کہاں واقع ہے؟", city),
        "year": ("اس کا افتتاح {A} میں ہوا۔", f"{org} کا افتتاح کب ہوا؟", year),
        "staff": ("یہاں {A} افراد کام کرتے ہیں۔", f"{org} میں کتنے افراد کام کرتے ہیں؟", staff),
    }


def plan_facts(rng: random.Random) -> dict[str, tuple[str, str, str]]:
    subject, obj, act = rng.choice(SUBJECTS), rng.choice(OBJECTS), rng.choice(ACTIVITIES)
    verb = rng.choice(["چلانے", "شروع کرنے", "مکمل کرنے"])
    return {
        "plan": (f"{subject} {obj} پر جلد ہی {{A}} {verb} والے ہیں!", f"{subject} کیا کرنے والے ہیں؟", act),
    }


def make_example(rng: random.Random, kind: str, key: str, uid: str, unanswerable: bool) -> dict:
    if kind == "person":
        facts, title = person_facts(rng, key), key
    elif kind == "city":
        facts, title = city_facts(rng, key), key
    elif kind == "org":
        facts, title = org_facts(rng, key), key
    else:
        facts, title = plan_facts(rng), "منصوبے"
    relations = list(facts)
    rng.shuffle(relations)
    if unanswerable and len(relations) > 1:
        asked = relations.pop()  # the paragraph will not say it
    else:
        asked = rng.choice(relations)
    keep = relations if kind == "plan" else relations[: max(2, len(relations) - rng.randint(0, 1))]
    if not unanswerable and asked not in keep:
        keep[-1] = asked
    parts: list[str] = []
    answer_start = -1
    for rel in keep:
        template, _, value = facts[rel]
        before, after = template.split("{A}")
        offset = sum(len(p) + 1 for p in parts)
        if rel == asked and not unanswerable:
            answer_start = offset + len(before)
        parts.append(before + value + after)
    context = " ".join(parts)
    question, answer = facts[asked][1], facts[asked][2]
    if unanswerable:
        answer = ""
    else:
        assert context[answer_start : answer_start + len(answer)] == answer
    return {
        "id": uid, "title": title, "context": context, "question": question,
        "is_impossible": unanswerable, "answer": answer, "answer_start": answer_start,
    }


def build(n_train: int = 2400, n_validation: int = 300, seed: int = 13) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    people = [f"{p} {s}" for p in PEOPLE for s in SURNAMES]
    orgs = [f"{a} {o}" for a in ORG_ADJ for o in ORGS]
    rng.shuffle(people)
    rng.shuffle(orgs)
    # held-out names: validation paragraphs are about people and organisations train never mentions
    val_people, train_people = people[:40], people[40:]
    val_orgs, train_orgs = orgs[:10], orgs[10:]

    def sample(n: int, split: str, people_pool: list[str], org_pool: list[str]) -> list[dict]:
        rows = []
        for i in range(n):
            kind = rng.choices(["person", "city", "org", "plan"], weights=[4, 3, 2, 1])[0]
            key = {"person": lambda: rng.choice(people_pool), "city": lambda: rng.choice(CITIES),
                   "org": lambda: rng.choice(org_pool), "plan": lambda: ""}[kind]()
            unanswerable = kind != "plan" and rng.random() < 0.25
            rows.append(make_example(rng, kind, key, f"demo-{split}-{i:05d}", unanswerable))
        return rows

    train = sample(n_train, "train", train_people, train_orgs)
    train.append({"id": "demo-train-seed", "title": "منصوبے", "context": SEED["context"], "question": SEED["question"],
                  "is_impossible": False, "answer": SEED["answer"],
                  "answer_start": SEED["context"].index(SEED["answer"])})
    validation = sample(n_validation, "validation", val_people, val_orgs)
    return train, validation


def write(out_dir: Path) -> None:
    train, validation = build()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("validation", validation)):
        with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    write(Path(__file__).parent / "data")
