"""MTA-STS (RFC 8461), the pure part: the ``_mta-sts`` TXT record, the policy file, and which MX
hosts a policy allows.  Fetching and caching are in :mod:`.stsfetch`.
"""

from __future__ import annotations

import re

import attrs

#: RFC 8461 §3.2: max_age is at most a year
MAX_AGE_LIMIT = 31557600
MODES = ("enforce", "testing", "none")
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


class PolicyError(ValueError):
    """A TXT record or policy file that does not follow RFC 8461; the message says where."""


def parse_txt(records: list[str]) -> str | None:
    """The policy ``id`` of the ``_mta-sts`` TXT records, or None when there is no MTA-STS record.

    Records not starting with ``v=STSv1`` are someone else's; two that do, or one without a valid
    ``id``, are an error (RFC 8461 §3.1: then the domain has no usable record)."""
    ours = [r for r in records if re.match(r"^v=STSv1\s*(;|$)", r)]
    if not ours:
        return None
    if len(ours) > 1:
        raise PolicyError(f"{len(ours)} MTA-STS TXT records (RFC 8461 §3.1 allows one)")
    fields = {}
    for part in ours[0].split(";"):
        key, eq, value = part.strip().partition("=")
        if eq:
            fields.setdefault(key.strip(), value.strip())
    policy_id = fields.get("id", "")
    if not _ID.match(policy_id):
        raise PolicyError(f"TXT record {ours[0]!r}: id must be 1 to 32 letters and digits")
    return policy_id


@attrs.frozen
class STSPolicy:
    mode: str
    mx: tuple[str, ...]
    max_age: int

    def allows(self, host: str) -> bool:
        """Whether MX host ``host`` matches one of the policy's ``mx`` patterns (§4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)

    def to_text(self) -> str:
        lines = ["version: STSv1", f"mode: {self.mode}", *(f"mx: {m}" for m in self.mx), f"max_age: {self.max_age}"]
        return "\n".join(lines) + "\n"


def mx_matches(pattern: str, host: str) -> bool:
    """``mail.example.com`` matches only itself; ``*.example.com`` matches exactly one more
    label on the left (``a.example.com``, not ``a.b.example.com`` nor ``example.com``)."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return pattern == host


def parse_policy(text: str) -> STSPolicy:
    """The policy file (RFC 8461 §3.2): ``key: value`` lines; unknown keys are ignored."""
    version = mode = max_age = None
    mx: list[str] = []
    for number, raw in enumerate(text.replace("\r\n", "\n").split("\n"), 1):
        line = raw.strip()
        if not line:
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise PolicyError(f"line {number}: expected 'key: value', got {line!r}")
        key, value = key.strip(), value.strip()
        if key == "version":
            version = value
        elif key == "mode":
            mode = value
        elif key == "max_age":
            max_age = value
        elif key == "mx":
            if not re.match(r"^(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?$", value):
                raise PolicyError(f"line {number}: mx {value!r} is not a host name or *.domain pattern")
            mx.append(value.lower().rstrip("."))
    if version != "STSv1":
        raise PolicyError(f"version must be STSv1, got {version!r}")
    if mode not in MODES:
        raise PolicyError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if max_age is None or not max_age.isdigit() or int(max_age) > MAX_AGE_LIMIT:
        raise PolicyError(f"max_age must be 0 to {MAX_AGE_LIMIT} seconds, got {max_age!r}")
    if not mx and mode != "none":
        raise PolicyError(f"mode {mode} needs at least one mx pattern")
    return STSPolicy(mode, tuple(mx), int(max_age))
