"""scripts/mutation: how it recognises message-only mutants and edits tables, and its quick CI run."""
import ast
import importlib.util
import subprocess
import sys
from importlib.machinery import SourceFileLoader

import pytest

from conftest import REPO

_loader = SourceFileLoader("mutation_tool", str(REPO / "scripts" / "mutation"))
_spec = importlib.util.spec_from_loader("mutation_tool", _loader)
tool = importlib.util.module_from_spec(_spec)
sys.modules["mutation_tool"] = tool  # its dataclasses look their module up
_loader.exec_module(tool)


@pytest.mark.parametrize("orig,mutant", [
    ('def f(x):\n    raise ValueError("give either a or b")\n', 'def f(x):\n    raise ValueError("XXgive either a or bXX")\n'),
    ('def f(t):\n    raise E(t, "expects a value")\n', 'def f(t):\n    raise E(t, "EXPECTS A VALUE")\n'),
    ('def f(t):\n    raise E(t, f"value of {t} " "names a URL")\n', 'def f(t):\n    raise E(t, f"value of {t} " "XXnames a URLXX")\n'),
    ('def f():\n    raise RequestError([("(request)", "must be an object")])\n',
     'def f():\n    raise RequestError([("(request)", "XXmust be an objectXX")])\n'),
    ('def f(v):\n    raise ValueError("output.s3_prefix: would land inside")\n',
     'def f(v):\n    raise ValueError("output.s3_prefix: XXwould land insideXX")\n'),
    ('class E(ValueError):\n    def __init__(self, p):\n        super().__init__("; ".join(p))\n',
     'class E(ValueError):\n    def __init__(self, p):\n        super().__init__("XX; XX".join(p))\n'),
])
def test_message_only(orig, mutant):
    assert tool.is_message_only(orig, mutant)


@pytest.mark.parametrize("orig,mutant", [
    # the field a problem is reported against is not message text
    ('def f():\n    raise RequestError([("(request)", "must be an object")])\n',
     'def f():\n    raise RequestError([("XX(request)XX", "must be an object")])\n'),
    ('def f(v):\n    raise ValueError("output.s3_prefix: would land inside")\n',
     'def f(v):\n    raise ValueError("XXoutput.s3_prefix: would land insideXX")\n'),
    ('def f(v):\n    raise ValueError("output.s3_prefix: would land inside")\n',
     'def f(v):\n    raise ValueError("OUTPUT.S3_PREFIX: WOULD LAND INSIDE")\n'),
    # a message dropped or replaced by None, or any change outside the raise
    ('def f(t):\n    raise E(t, "expects a value")\n', 'def f(t):\n    raise E(t, None)\n'),
    ('def f(t):\n    raise E(t, "expects a value")\n', 'def f(t):\n    raise E(t)\n'),
    ('def f(t):\n    if t == "-i":\n        raise E(t, "no")\n', 'def f(t):\n    if t == "XX-iXX":\n        raise E(t, "no")\n'),
    ('def f(t):\n    msg = "unknown field"\n    return msg\n', 'def f(t):\n    msg = "XXunknown fieldXX"\n    return msg\n'),
    ('def f(t):\n    raise E(t, "x")\n', 'def f(t):\n    return E(t, "x")\n'),
    ('def f(t):\n    raise E(t, "x")\n', 'def f(t):\n    raise E(t, "x")\n'),  # not a mutant at all
])
def test_not_message_only(orig, mutant):
    assert not tool.is_message_only(orig, mutant)



@pytest.mark.parametrize("orig,mutant", [
    ('def f(db):\n    db.execute("SELECT 1 FROM item WHERE key = ? LIMIT 1", (k,))\n',
     'def f(db):\n    db.execute("select 1 from item where key = ? limit 1", (k,))\n'),
    ('def f(db):\n    db.executescript("PRAGMA journal_mode=OFF; CREATE TABLE t(a TEXT)")\n',
     'def f(db):\n    db.executescript("PRAGMA JOURNAL_MODE=OFF; CREATE TABLE T(A TEXT)")\n'),
    ('def f(db, rows):\n    return db.executemany("INSERT INTO item(key) VALUES (?)", rows).rowcount\n',
     'def f(db, rows):\n    return db.executemany("insert into item(key) values (?)", rows).rowcount\n'),
])
def test_sql_case_only(orig, mutant):
    assert tool.is_sql_case_only(orig, mutant) and tool.is_excluded(orig, mutant)


@pytest.mark.parametrize("orig,mutant", [
    # quoted SQL keeps its case: 'A' and 'a' are different values
    ("def f(db):\n    db.execute(\"SELECT 1 FROM t WHERE k = 'A'\")\n",
     "def f(db):\n    db.execute(\"select 1 from t where k = 'a'\")\n"),
    ('def f(db):\n    db.execute(\'SELECT "Key" FROM t\')\n', 'def f(db):\n    db.execute(\'select "key" from t\')\n'),
    # more than case, or case outside an execute call
    ('def f(db):\n    db.execute("SELECT 1 FROM item")\n', 'def f(db):\n    db.execute("XXSELECT 1 FROM itemXX")\n'),
    ('def f(db):\n    db.execute("SELECT 1 FROM item")\n', 'def f(db):\n    db.execute("SELECT 1 FROM items")\n'),
    ('def f(k):\n    return k == "SELECT"\n', 'def f(k):\n    return k == "select"\n'),
    ('def f(db):\n    db.execute("SELECT 1")\n', 'def f(db):\n    db.execute("SELECT 1")\n'),  # not a mutant at all
])
def test_not_sql_case_only(orig, mutant):
    assert not tool.is_sql_case_only(orig, mutant) and not tool.is_excluded(orig, mutant)

TABLES = '''import re
from pydantic import BaseModel, Field
from typing import Literal
FLAGS: dict[str, bool] = {"an": False, "c": True}  # a comment
NAMES = {"movie", "amovie",
    "zmq",  # last
}
PAT = re.compile(r"^(file|path)$" r"|x{0,3}", re.I)
class Spec(BaseModel):
    n: int = Field(10, ge=1, le=100, description="n")
    on: bool = Field(True, description="on")
    t: float | None = Field(None, gt=-0.5)
    kind: Literal["a", "b"] = "a"
'''


def test_table_mutants_each_change_one_entry():
    got = {m.where: m.source for m in tool.table_mutants("m", TABLES)}
    assert set(got) == {
        "FLAGS: without 'an'", "FLAGS: without 'c'", "FLAGS['an']: False -> True", "FLAGS['c']: True -> False",
        "NAMES: without 'movie'", "NAMES: without 'amovie'", "NAMES: without 'zmq'",
        "PAT: without 'file'", "PAT: without 'path'", "PAT: {0,3} -> {0,2}", "PAT: {0,3} -> {0,4}",
        "Spec.n: ge=1 -> ge=0", "Spec.n: ge=1 -> ge=2", "Spec.n: ge=1 -> gt=1",
        "Spec.n: le=100 -> le=99", "Spec.n: le=100 -> le=101", "Spec.n: le=100 -> lt=100", "Spec.n: default 10 -> 11",
        "Spec.on: default True -> False",
        "Spec.t: gt=-0.5 -> gt=-1.5", "Spec.t: gt=-0.5 -> gt=0.5", "Spec.t: gt=-0.5 -> ge=-0.5",
        "Spec.kind: Literal without 'a'", "Spec.kind: Literal without 'b'",
    }
    scope: dict = {}
    exec(compile(got["FLAGS['an']: False -> True"], "m", "exec"), scope)
    assert scope["FLAGS"] == {"an": True, "c": True}
    exec(compile(got["NAMES: without 'zmq'"], "m", "exec"), scope)
    assert scope["NAMES"] == {"movie", "amovie"}
    exec(compile(got["PAT: without 'file'"], "m", "exec"), scope)
    assert scope["PAT"].pattern == "^(path)$|x{0,3}"
    exec(compile(got["Spec.n: le=100 -> lt=100"], "m", "exec"), scope)
    assert scope["Spec"].model_fields["n"].metadata[1].lt == 100
    for source in got.values():
        ast.parse(source)


# ffleet.request's own fields: Field(kind, default, bounds...) as plain class attributes
FIELDS = '''from ffleet.request import Field, _Spec
class Part(_Spec):
    m = Field(float, 30, ge=1, le=3600, description="m")
    on = Field(bool, True)
    s = Field(str, None)
    sub = Field(_Spec, _Spec)
'''


def test_table_mutants_of_ffleet_fields():
    got = {m.where: m.source for m in tool.table_mutants("m", FIELDS)}
    assert set(got) == {
        "Part.m: ge=1 -> ge=0", "Part.m: ge=1 -> ge=2", "Part.m: ge=1 -> gt=1",
        "Part.m: le=3600 -> le=3599", "Part.m: le=3600 -> le=3601", "Part.m: le=3600 -> lt=3600",
        "Part.m: default 30 -> 31", "Part.on: default True -> False",
    }
    scope: dict = {}
    exec(compile(got["Part.m: le=3600 -> lt=3600"], "m", "exec"), scope)
    assert scope["Part"]._fields["m"].lt == 3600 and scope["Part"]._fields["m"].le is None
    exec(compile(got["Part.m: default 30 -> 31"], "m", "exec"), scope)
    assert scope["Part"]().m == 31


def test_every_table_of_the_four_modules_yields_mutants():
    for module in tool.MODULES:
        where = {m.where.split(":")[0] for m in tool.table_mutants(module, (REPO / "src/ffleet" / f"{module}.py").read_text())}
        expected = {"policy": {"ALLOWED_FLAGS", "ALLOWED_FLAGS['an']", "FORBIDDEN_FILTERS", "_PROTOCOLS", "_PATH_OPTION",
                               "FORBIDDEN_FORMATS", "ENCODER_PARAM_KEYS", "FILE_OPTION_FILTERS",
                               "FORBIDDEN_OUTPUT_EXTENSIONS"},
                    "request": {"ProcessingSpec.files_per_job", "QualitySpec.max_seconds", "COMPUTE_TYPES", "MEASURE_AT",
                                "SegmentSpec.at_silence", "_NAME_PATTERN", "_EXTENSION_PATTERN"},
                    "inventory": {"KEY_FIELDS"}, "keys": set()}[module]
        assert expected <= where, module


@pytest.mark.slow
def test_quick_mutation_run(tmp_path):
    pytest.importorskip("mutmut")
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "mutation"), "--quick", "--fail-under", "85",
                          "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "keys.py" in run.stdout


def test_decorated_functions_get_mutmuts_mutations():
    source = ('import functools\n\n\ndef plain(x):\n    return x + 1\n\n\nclass C:\n    @property\n'
              '    def p(self):\n        return self.a and self.b\n\n    @staticmethod\n    def s(x):\n        return x - 1\n')
    got = tool.decorated_mutants("m", source)
    assert got and all(m.where.startswith("p line 11: ") for m in got)  # not plain() nor s(): mutmut does those
    assert any("return self.a or self.b" in m.source for m in got)
    for m in got:
        ast.parse(m.source)
