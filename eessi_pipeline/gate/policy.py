"""The publication policy (``matrices/policy.yaml``), loaded into frozen dataclasses."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import GateRefused
from ..matrix import PROJECT_ROOT
from ..schema import validate
from ..yamlio import load_yaml

ACCEL_RULE = "software-accel"

#: What a record made under emulation may publish: nothing, generic targets only (the default), anything.
EMULATED_CHOICES = ("none", "generic", "all")


@dataclass(frozen=True, slots=True)
class ContentRule:
    required_tests: tuple[str, ...]
    require_reframe: bool
    require_references: bool = False  # every performance value must have a reference band


@dataclass(frozen=True, slots=True)
class Policy:
    path: Path
    sha256: str
    max_record_age_hours: int
    require_approval: bool
    allowed_signers: str
    signature_namespace: str
    content_types: dict[str, ContentRule]
    post_publish_checks: str
    emulated_records: str = "generic"  # one of EMULATED_CHOICES

    def rule(self, content_type: str) -> ContentRule | None:
        return self.content_types.get(content_type)

    def rule_for(self, content_type: str, named_target: str) -> tuple[str, ContentRule | None]:
        """The rule of a tarball: software of an accelerator subdir (``…/accel/nvidia/cc90``) has its own,
        ``software-accel`` (the GPU checks); ``(rule name, rule or None)``."""
        if content_type == "software" and "/accel/" in f"/{named_target}/":
            return ACCEL_RULE, self.content_types.get(ACCEL_RULE)
        return content_type, self.content_types.get(content_type)

    def allowed_signers_path(self, state_dir: Path) -> Path:
        p = Path(self.allowed_signers)
        return p if p.is_absolute() else state_dir / p


def default_policy_path() -> Path:
    return PROJECT_ROOT / "matrices" / "policy.yaml"


def load_policy(path: Path | str | None = None) -> Policy:
    p = Path(path) if path else default_policy_path()
    data = validate(load_yaml(p, GateRefused), "policy", p, GateRefused)
    rules = {k: ContentRule(tuple(v["required_tests"]), bool(v["require_reframe"]),
                            bool(v.get("require_references", False)))
             for k, v in data["content_types"].items()}  # fmt: skip
    return Policy(p, hashlib.sha256(p.read_bytes()).hexdigest(), data["max_record_age_hours"],
                  data["require_approval"], data["allowed_signers"], data["signature_namespace"], rules,
                  data["post_publish_checks"], data.get("emulated_records", "generic"))  # fmt: skip
