"""No silently ignored configuration: every leaf field of RunConfig is read somewhere in mhpo_vl/ (outside
RunConfig.validate), checked statically by tests/config_reads.py. The checker itself is tested on a synthetic
config: it must report a field that nothing reads, and must not credit `trainer.seed` for a read of `data.seed`."""
from dataclasses import dataclass, field
from pathlib import Path

from config_reads import leaf_fields, package_sources, unread_fields

from mhpo_vl.config import RunConfig

PACKAGE = Path(__file__).resolve().parent.parent / "mhpo_vl"


def test_every_config_field_is_read_by_the_package():
    sources = package_sources(PACKAGE)
    unread = unread_fields(RunConfig, sources, skip={("mhpo_vl/config.py", "validate")})
    assert not unread, (f"config fields that nothing in mhpo_vl/ reads (a user setting them would be ignored): "
                        f"{unread}. Use them, or remove them from mhpo_vl/config.py.")
    assert len(leaf_fields(RunConfig)) > 80  # the walk really went through every section


@dataclass
class _Data:
    seed: int = 0
    path: str = ""


@dataclass
class _Trainer:
    seed: int = 0
    steps: int = 1
    unused_knob: float = 0.5


@dataclass
class _Root:
    data: _Data = field(default_factory=_Data)
    trainer: _Trainer = field(default_factory=_Trainer)


_SOURCE = '''
class Runner:
    def __init__(self, cfg):
        self.cfg = cfg
        t = cfg.trainer
        for _ in range(t.steps):
            pass

    def load(self):
        d = self.cfg.data
        return open(getattr(d, "path")), d.seed


def validate(cfg):
    return cfg.trainer.unused_knob > 0  # a check, not a use: skipped


def unrelated(x, trainer):
    return x.seed + trainer.unused_knob  # neither `x` nor `trainer` is known to be a config section
'''


def test_the_checker_reports_an_unread_field_and_does_not_confuse_equal_names():
    unread = unread_fields(_Root, {"m.py": _SOURCE}, skip={("m.py", "validate")})
    assert unread == ["trainer.seed", "trainer.unused_knob"]
    # once something reads them through a known section, they count
    used = _SOURCE + "\ndef later(cfg):\n    s = cfg.trainer\n    return s.seed, s.unused_knob\n"
    assert unread_fields(_Root, {"m.py": used}, skip={("m.py", "validate")}) == []
    # without the skip, the read inside validate() would count
    assert unread_fields(_Root, {"m.py": _SOURCE}) == ["trainer.seed"]


def test_annotated_parameters_and_config_methods_are_known_sections():
    source = '''
def run(spec: "_Trainer", other: _Data):
    return spec.seed, other.path

class _Trainer:
    def total(self):
        return self.steps * 2
'''
    assert unread_fields(_Root, {"m.py": source}) == ["data.seed", "trainer.unused_knob"]
