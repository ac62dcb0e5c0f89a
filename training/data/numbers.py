"""Offline parallel corpus: English number phrases and their French (or German) renderings.

Built on ``num2words`` and a few template sentences, seeded, so every machine generates the same pairs
without touching the network. What makes it non-trivial is described in ``docs/corpus.md``: word-order
changes (adjective after the noun in French), gender and number agreement ("vingt et une pommes
rouges"), French vigesimal compounds ("quatre-vingt-dix-sept"), German compounding and inverted units
("siebenundneunzig"), and years read differently in each language ("nineteen ninety-nine" ->
"mille neuf cent quatre-vingt-dix-neuf").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cache

from num2words import num2words

LANGS = ("fr", "de")


@dataclass(frozen=True)
class Noun:
    en: str
    en_pl: str
    fr: str
    fr_pl: str
    fr_gender: str  # "m" | "f"
    de: str
    de_pl: str
    de_gender: str  # "m" | "f" | "n"


@dataclass(frozen=True)
class Adjective:
    en: str
    fr: tuple[str, str, str, str]  # m.sg, f.sg, m.pl, f.pl
    fr_before: bool  # French adjectives of size go before the noun, colours after it
    de: str  # stem, declined by ending


# fmt: off
NOUNS = (
    Noun("apple", "apples", "pomme", "pommes", "f", "Apfel", "Äpfel", "m"),
    Noun("book", "books", "livre", "livres", "m", "Buch", "Bücher", "n"),
    Noun("car", "cars", "voiture", "voitures", "f", "Auto", "Autos", "n"),
    Noun("house", "houses", "maison", "maisons", "f", "Haus", "Häuser", "n"),
    Noun("chair", "chairs", "chaise", "chaises", "f", "Stuhl", "Stühle", "m"),
    Noun("dog", "dogs", "chien", "chiens", "m", "Hund", "Hunde", "m"),
    Noun("cat", "cats", "chat", "chats", "m", "Katze", "Katzen", "f"),
    Noun("bottle", "bottles", "bouteille", "bouteilles", "f", "Flasche", "Flaschen", "f"),
    Noun("ticket", "tickets", "billet", "billets", "m", "Fahrkarte", "Fahrkarten", "f"),
    Noun("flower", "flowers", "fleur", "fleurs", "f", "Blume", "Blumen", "f"),
    Noun("letter", "letters", "lettre", "lettres", "f", "Brief", "Briefe", "m"),
    Noun("glass", "glasses", "verre", "verres", "m", "Glas", "Gläser", "n"),
    Noun("pen", "pens", "stylo", "stylos", "m", "Stift", "Stifte", "m"),
    Noun("box", "boxes", "boîte", "boîtes", "f", "Kiste", "Kisten", "f"),
)
ORDINAL_NOUNS = (
    Noun("floor", "floors", "étage", "étages", "m", "Stock", "Stöcke", "m"),
    Noun("street", "streets", "rue", "rues", "f", "Straße", "Straßen", "f"),
    Noun("day", "days", "jour", "jours", "m", "Tag", "Tage", "m"),
    Noun("page", "pages", "page", "pages", "f", "Seite", "Seiten", "f"),
    Noun("chapter", "chapters", "chapitre", "chapitres", "m", "Kapitel", "Kapitel", "n"),
    Noun("row", "rows", "rangée", "rangées", "f", "Reihe", "Reihen", "f"),
)
ADJECTIVES = (
    Adjective("red", ("rouge", "rouge", "rouges", "rouges"), False, "rot"),
    Adjective("green", ("vert", "verte", "verts", "vertes"), False, "grün"),
    Adjective("black", ("noir", "noire", "noirs", "noires"), False, "schwarz"),
    Adjective("white", ("blanc", "blanche", "blancs", "blanches"), False, "weiß"),
    Adjective("small", ("petit", "petite", "petits", "petites"), True, "klein"),
    Adjective("big", ("grand", "grande", "grands", "grandes"), True, "groß"),
    Adjective("old", ("vieux", "vieille", "vieux", "vieilles"), True, "alt"),
)
# Count templates: English, French, German ("{x}" is the counted noun phrase).
COUNT_TEMPLATES = (
    ("{x}", "{x}", "{x}"),
    ("i bought {x}", "j'ai acheté {x}", "ich kaufte {x}"),
    ("we have {x}", "nous avons {x}", "wir haben {x}"),
    ("she sold {x}", "elle a vendu {x}", "sie verkaufte {x}"),
    ("they found {x}", "ils ont trouvé {x}", "sie fanden {x}"),
)
CURRENCIES = (("dollar", "dollars", "dollar", "dollars", "Dollar"), ("euro", "euros", "euro", "euros", "Euro"))
# fmt: on
_DE_ARTICLES = {"m": "der", "f": "die", "n": "das"}
_DE_INDEF_ACC = {"m": ("einen", "en"), "f": ("eine", "e"), "n": ("ein", "es")}


@cache
def english_cardinal(n: int) -> str:
    return num2words(n, lang="en").replace(",", "")


@cache
def english_ordinal(n: int) -> str:
    return num2words(n, lang="en", to="ordinal").replace(",", "")


@cache
def cardinal(n: int, lang: str, gender: str = "m", *, before_noun: bool = True) -> str:
    """The cardinal in ``lang``; French "un" agrees with a feminine noun ("vingt et une"). German drops
    the final "s" of "eins" before a noun ("hundertein Euro") but keeps it alone ("hunderteins")."""
    text = num2words(n, lang=lang)
    if lang == "fr" and gender == "f":
        text = re.sub(r"\bun$", "une", text)
    if lang == "de":
        text = re.sub(r"^einhundert", "hundert", text)
        text = re.sub(r"^eintausend", "tausend", text)
        text = re.sub(r"eins$", "ein", text) if n != 1 and before_noun else text
    return text


@cache
def ordinal(n: int, lang: str, gender: str = "m") -> str:
    """The ordinal in ``lang``, fixing num2words' French plural forms ("quatre-vingtième")."""
    if lang == "fr" and n == 1:
        return "première" if gender == "f" else "premier"
    text = num2words(n, lang=lang, to="ordinal")
    if lang == "fr":
        text = re.sub(r"(vingt|cent)sième", r"\1ième", text)
    if lang == "de":
        text = re.sub(r"^einhundert", "hundert", text)
        text = re.sub(r"^eintausend", "tausend", text)
    return text


def number_pair(n: int, lang: str = "fr") -> tuple[str, str]:
    """A bare cardinal: (English, ``lang``); e.g. 342 -> ("three hundred and forty-two", "trois cent quarante-deux")."""
    return english_cardinal(n), cardinal(n, lang, before_noun=False)


def count_phrase(n: int, noun: Noun, adj: Adjective | None, lang: str) -> tuple[str, str]:
    """'twenty-one red apples' -> 'vingt et une pommes rouges' / 'einundzwanzig rote Äpfel'."""
    plural = n != 1
    en_noun = noun.en_pl if plural else noun.en
    en = " ".join(w for w in (english_cardinal(n) if plural else "one", adj.en if adj else "", en_noun) if w)
    if lang == "fr":
        g = noun.fr_gender
        word = noun.fr_pl if plural else noun.fr
        number = cardinal(n, "fr", g) if plural else ("une" if g == "f" else "un")
        if adj is None:
            return en, f"{number} {word}"
        form = adj.fr[(2 if plural else 0) + (g == "f")]
        return en, f"{number} {form} {word}" if adj.fr_before else f"{number} {word} {form}"
    g = noun.de_gender
    if plural:
        head, ending, word = cardinal(n, "de"), "e", noun.de_pl
    else:
        (head, ending), word = _DE_INDEF_ACC[g], noun.de
    return en, " ".join(w for w in (head, adj.de + ending if adj else "", word) if w)


def ordinal_phrase(n: int, noun: Noun, lang: str) -> tuple[str, str]:
    """'the forty-second floor' -> 'le quarante-deuxième étage' / 'der zweiundvierzigste Stock'."""
    en = f"the {english_ordinal(n)} {noun.en}"
    if lang == "fr":
        article = "la" if noun.fr_gender == "f" else "le"
        return en, f"{article} {ordinal(n, 'fr', noun.fr_gender)} {noun.fr}"
    return en, f"{_DE_ARTICLES[noun.de_gender]} {ordinal(n, 'de')} {noun.de}"


def year_phrase(year: int, lang: str) -> tuple[str, str]:
    """'in nineteen ninety-nine' -> 'en mille neuf cent quatre-vingt-dix-neuf' / 'im Jahr neunzehnhundert...'."""
    en = "in " + num2words(year, lang="en", to="year").replace(",", "")
    if lang == "fr":
        return en, "en " + cardinal(year, "fr")
    return en, "im Jahr " + num2words(year, lang="de", to="year")


def amount_phrase(units: int, cents: int, currency: tuple[str, ...], lang: str) -> tuple[str, str]:
    """'it costs forty-two euros and five cents' -> 'ça coûte quarante-deux euros et cinq centimes'."""
    en_sg, en_pl, fr_sg, fr_pl, de_unit = currency
    en = f"it costs {english_cardinal(units)} {en_sg if units == 1 else en_pl}"
    if lang == "fr":
        fr = f"ça coûte {cardinal(units, 'fr')} {fr_sg if units == 1 else fr_pl}"
    else:
        fr = f"es kostet {'einen' if units == 1 else cardinal(units, 'de')} {de_unit}"
    if cents:
        en += f" and {english_cardinal(cents)} {'cent' if cents == 1 else 'cents'}"
        if lang == "fr":
            fr += f" et {cardinal(cents, 'fr', 'm')} {'centime' if cents == 1 else 'centimes'}"
        else:
            fr += f" und {'einen' if cents == 1 else cardinal(cents, 'de')} Cent"
    return en, fr


def _sample_count(rng: random.Random) -> int:
    """Mostly small numbers, some hundreds, a few thousands (compounding is where the errors are)."""
    r = rng.random()
    if r < 0.35:
        return rng.randint(1, 99)
    if r < 0.85:
        return rng.randint(100, 999)
    return rng.randint(1000, 9999)


def _sample_pair(rng: random.Random, lang: str) -> tuple[str, str]:
    kind = rng.random()
    if kind < 0.12:
        return number_pair(_sample_count(rng), lang)
    if kind < 0.62:
        noun = rng.choice(NOUNS)
        adj = rng.choice(ADJECTIVES) if rng.random() < 0.5 else None
        en, tgt = count_phrase(_sample_count(rng), noun, adj, lang)
        template = rng.choice(COUNT_TEMPLATES)
        return template[0].format(x=en), template[1 if lang == "fr" else 2].format(x=tgt)
    if kind < 0.80:
        return ordinal_phrase(rng.randint(1, 199), rng.choice(ORDINAL_NOUNS), lang)
    if kind < 0.90:
        return year_phrase(rng.randint(1900, 2099), lang)
    cents = rng.randint(1, 99) if rng.random() < 0.5 else 0
    return amount_phrase(rng.randint(1, 999), cents, rng.choice(CURRENCIES), lang)


def generate_pairs(n_pairs: int = 36000, *, lang: str = "fr", seed: int = 0) -> list[tuple[str, str]]:
    """``n_pairs`` distinct (English, ``lang``) pairs, the same for the same seed on every machine."""
    if lang not in LANGS:
        raise ValueError(f"unknown language {lang!r} for the numbers corpus; choose from {LANGS}")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be positive, got {n_pairs}")
    rng = random.Random(seed)
    seen: dict[tuple[str, str], None] = {}
    attempts = 0
    while len(seen) < n_pairs and attempts < 20 * n_pairs:
        seen.setdefault(_sample_pair(rng, lang), None)
        attempts += 1
    return list(seen)
