"""Knowledge base: the bundled GeoNames KB, loading user files, lookup, atomic save."""

import json
from collections import Counter
from pathlib import Path

import pytest

from halluc_cli import io as io_module
from halluc_cli.data.kb import Fact, KnowledgeBase, bundled_kb_path, load_kb
from halluc_cli.data.normalize import normalize_text
from halluc_cli.errors import UserError

FACTS = [
    Fact("Brazil", "capital", "Brasília", ("Brasilia",)),
    Fact("France", "capital", "Paris"),
    Fact("France", "continent", "Europe"),
    Fact("Côte d'Ivoire", "capital", "Yamoussoukro"),
]


@pytest.fixture(scope="module")
def bundled() -> KnowledgeBase:
    return load_kb()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- the bundled KB --------------------------------------------------------------------


def test_bundled_kb_size_and_relations(bundled: KnowledgeBase) -> None:
    assert len(bundled) >= 3000
    assert len(bundled.relations) >= 5
    assert {"capital", "continent", "currency", "language", "country_of_city"} <= set(bundled.relations)
    assert bundled_kb_path().stat().st_size < 1_500_000


def test_bundled_kb_has_one_fact_per_subject_and_relation(bundled: KnowledgeBase) -> None:
    counts = Counter((normalize_text(f.subject), f.relation) for f in bundled.facts)
    assert [key for key, n in counts.items() if n > 1] == []


def test_bundled_kb_is_clean(bundled: KnowledgeBase) -> None:
    for fact in bundled.facts:
        for text in (fact.subject, fact.object, *fact.aliases):
            assert text == text.strip() and "  " not in text, fact
        assert len(fact.aliases) <= 5, fact
        assert normalize_text(fact.object), fact


def test_bundled_kb_cleaning_decisions(bundled: KnowledgeBase) -> None:
    (brazil,) = bundled.lookup("Brazil", "capital")
    assert brazil.object == "Brasília" and "Brasilia" in brazil.aliases
    assert bundled.lookup("Kazakhstan", "capital")[0].object == "Astana"
    assert bundled.lookup("Curaçao", "capital")[0].object == "Willemstad"  # was " Willemstad"
    assert bundled.lookup("Springfield", "country_of_city") == []  # ambiguous: dropped
    assert "Springfield" not in bundled.subjects("country_of_city")
    obsolete = {"Serbia and Montenegro", "Netherlands Antilles"}
    names = {text for f in bundled.facts for text in (f.subject, f.object, *f.aliases)}
    assert not names & obsolete


def test_bundled_kb_is_sorted_and_loadable_by_name(bundled: KnowledgeBase) -> None:
    keys = [(f.relation, f.subject, f.object) for f in bundled.facts]
    assert keys == sorted(keys)
    assert load_kb("geonames").facts == bundled.facts
    assert load_kb(bundled_kb_path()).facts == bundled.facts


def test_unknown_kb_name_is_a_user_error() -> None:
    with pytest.raises(UserError, match="geonmaes.*bundled name"):
        load_kb("geonmaes")


# --- lookup ----------------------------------------------------------------------------


def test_lookup_ignores_case_accents_and_punctuation() -> None:
    kb = KnowledgeBase(FACTS)
    for query in ["Brazil", "BRAZIL", " brazil. ", "the Brazil"]:
        assert [f.object for f in kb.lookup(query, "capital")] == ["Brasília"]
    assert kb.lookup("cote d ivoire", "capital")[0].object == "Yamoussoukro"
    assert kb.lookup("Brazil", "continent") == []
    assert kb.lookup("Atlantis", "capital") == []


def test_objects_are_normalized_surface_forms() -> None:
    kb = KnowledgeBase(FACTS)
    assert kb.objects("brazil", "capital") == {"brasilia"}
    assert kb.objects("France", "capital") == {"paris"}
    assert kb.objects("Atlantis", "capital") == set()
    assert FACTS[0].surface_forms == ("Brasília", "Brasilia")


def test_knowledge_base_views() -> None:
    kb = KnowledgeBase(FACTS)
    assert len(kb) == 4
    assert kb.relations == ["capital", "continent"]
    assert kb.subjects() == ["Brazil", "Côte d'Ivoire", "France"]
    assert kb.subjects("continent") == ["France"]
    assert {r: len(fs) for r, fs in kb.by_relation().items()} == {"capital": 3, "continent": 1}


# --- loading user files -----------------------------------------------------------------


def test_load_jsonl(tmp_path: Path) -> None:
    path = write(
        tmp_path / "kb.jsonl",
        '{"subject": "Brazil", "relation": "capital", "object": "Brasília", "aliases": ["Brasilia"]}\n'
        "\n"  # blank lines are skipped
        '{"subject": " France ", "relation": "capital", "object": "Paris", "extra": 1}\n'
        '{"subject": "Chad", "relation": "capital", "object": "N\'Djamena", "aliases": null}\n',
    )
    kb = KnowledgeBase.load(path)
    assert kb.facts == [FACTS[0], FACTS[1], Fact("Chad", "capital", "N'Djamena")]


def test_load_csv(tmp_path: Path) -> None:
    path = write(
        tmp_path / "kb.csv",
        "subject,relation,object,aliases\n"
        "Brazil,capital,Brasília,Brasilia\n"
        'United States,capital,Washington,"Washington D.C.| Washington DC"\n'
        "France,capital,Paris,\n",
    )
    kb = KnowledgeBase.load(path)
    assert kb.facts == [
        FACTS[0],
        Fact("United States", "capital", "Washington", ("Washington D.C.", "Washington DC")),
        FACTS[1],
    ]


def test_load_csv_without_aliases_column(tmp_path: Path) -> None:
    kb = KnowledgeBase.load(write(tmp_path / "kb.csv", "subject,relation,object\nFrance,capital,Paris\n"))
    assert kb.facts == [FACTS[1]]


GOOD = '{"subject": "France", "relation": "capital", "object": "Paris"}\n'
NO_OBJECT = '{"subject": "Spain", "relation": "capital"}\n'
BLANK_SUBJECT = '{"subject": "  ", "relation": "capital", "object": "Paris"}\n'
NUMBER_OBJECT = '{"subject": "Moon landing", "relation": "year", "object": 1969}\n'
CSV_HEADER = "subject,relation,object\n"


@pytest.mark.parametrize(
    "name, text, line, problem",
    [
        ("kb.jsonl", GOOD + "{not json}\n", 2, "invalid JSON"),
        ("kb.jsonl", GOOD + '["France", "capital", "Paris"]\n', 2, "expected a JSON object"),
        ("kb.jsonl", GOOD + GOOD + NO_OBJECT, 3, "missing field 'object'"),
        ("kb.jsonl", BLANK_SUBJECT, 1, "field 'subject' is empty"),
        ("kb.jsonl", NUMBER_OBJECT, 1, "'object' must be a string"),
        ("kb.jsonl", GOOD[:-2] + ', "aliases": "Paname"}\n', 1, "'aliases' must be a list of strings"),
        ("kb.jsonl", GOOD[:-2] + ', "aliases": ["Paname", 2]}\n', 1, "'aliases' must be a list of strings"),
        ("kb.csv", "subject,relation,obj\nFrance,capital,Paris\n", 1, "missing column 'object'"),
        ("kb.csv", CSV_HEADER + "France,capital,Paris\nSpain,capital\n", 3, "missing field 'object'"),
        ("kb.csv", CSV_HEADER + "France,,Paris\n", 2, "field 'relation' is empty"),
    ],
)
def test_malformed_line_names_file_and_line(
    tmp_path: Path, name: str, text: str, line: int, problem: str
) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(UserError) as info:
        KnowledgeBase.load(path)
    message = str(info.value)
    assert f"{path} line {line}:" in message and problem in message
    assert "\n" not in message  # one clear line


@pytest.mark.parametrize(
    "name, text", [("kb.jsonl", ""), ("kb.jsonl", "\n  \n"), ("kb.csv", ""), ("kb.csv", CSV_HEADER)]
)
def test_empty_file_is_a_user_error(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(UserError, match=f"{path}: the file holds no facts"):
        KnowledgeBase.load(path)


def test_missing_file_and_wrong_suffix_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        KnowledgeBase.load(tmp_path / "absent.jsonl")
    with pytest.raises(UserError, match=r"use a \.jsonl or \.csv file"):
        KnowledgeBase.load(write(tmp_path / "kb.json", GOOD))


def test_non_utf8_file_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "kb.csv"
    path.write_bytes("subject,relation,object\nS\xe3o Tom\xe9,capital,S\xe3o Tom\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        KnowledgeBase.load(path)


# --- saving ----------------------------------------------------------------------------


def test_save_jsonl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out" / "kb.jsonl"
    KnowledgeBase(FACTS).save_jsonl(path)
    assert KnowledgeBase.load(path).facts == FACTS
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {
        "subject": "Brazil", "relation": "capital", "object": "Brasília", "aliases": ["Brasilia"]
    }
    assert "aliases" not in json.loads(lines[1])
    assert "Brasília" in lines[0]  # UTF-8, not \u escapes
    assert sorted(p.name for p in path.parent.iterdir()) == ["kb.jsonl"]  # no temp file left


def test_save_jsonl_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "kb.jsonl", GOOD)
    calls = []

    def failing_dumps(obj: object, **kwargs: object) -> str:
        calls.append(obj)
        if len(calls) == 2:
            raise OSError("disk full")
        return json.dumps(obj, **kwargs)

    monkeypatch.setattr(io_module.json, "dumps", failing_dumps)  # the JSONL writer KB saving goes through
    with pytest.raises(OSError, match="disk full"):
        KnowledgeBase(FACTS).save_jsonl(path)
    assert path.read_text(encoding="utf-8") == GOOD  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["kb.jsonl"]
