"""Which SSH algorithms a session may use: the legacy set only when allowed.

The client is paramiko 4.x (pinned in pyproject.toml): paramiko 5 removed the SHA-1
key exchanges and ``ssh-rsa`` signatures that RouterOS 6 still requires, so 5 cannot
back those devices up at all. Since 4.x still has them, a session not allowed legacy
algorithms passes every legacy name the library knows as ``disabled_algorithms``:
they are then neither offered nor accepted, whatever the device prefers.
"""

from __future__ import annotations

import fnmatch

import paramiko
from paramiko.message import Message

# The legacy set, by paramiko's category names (patterns as in fnmatch).
LEGACY = {
    "kex": (
        "diffie-hellman-group1-sha1",
        "diffie-hellman-group14-sha1",
        "diffie-hellman-group-exchange-sha1",
    ),
    "keys": ("ssh-rsa", "ssh-rsa-cert-*"),  # host-key signatures (SHA-1)
    "pubkeys": ("ssh-rsa", "ssh-rsa-cert-*"),  # user-key signatures (SHA-1)
    "macs": ("hmac-sha1*", "hmac-md5*"),
    "ciphers": ("*-cbc",),
}
# Where each category's full list of known names lives on paramiko's Transport.
_KNOWN = {
    "kex": "_kex_info", "keys": "_key_info", "pubkeys": "_key_info",
    "macs": "_mac_info", "ciphers": "_cipher_info",
}
HOW_TO_ALLOW = "RAY_BACKUP_SSH_LEGACY_ALGORITHMS=1 or the device's ssh_legacy_algorithms: true"

_CERT_SUFFIX = "-cert-v01@openssh.com"
# The RSA signature algorithms all sign with the same RSA host key.
_RSA_SIGNATURES = frozenset({"ssh-rsa", "rsa-sha2-256", "rsa-sha2-512"})


def is_legacy(category: str, name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in LEGACY[category])


def disabled_algorithms(allow_legacy: bool) -> dict[str, list[str]]:
    """paramiko's ``disabled_algorithms``: every known legacy name, unless allowed."""
    if allow_legacy:
        return {}
    return {
        category: [n for n in getattr(paramiko.Transport, _KNOWN[category]) if is_legacy(category, n)]
        for category in LEGACY
    }


def key_type(algorithm: str) -> str:
    """The host key an algorithm signs with: ``rsa-sha2-512`` and ``ssh-rsa`` share one."""
    name = algorithm.removesuffix(_CERT_SUFFIX)
    return "ssh-rsa" if name in _RSA_SIGNATURES else name


def algorithms_for(key: str, preferred: tuple[str, ...]) -> tuple[str, ...]:
    """The algorithms of ``preferred`` that sign with a host key of type ``key``."""
    return tuple(a for a in preferred if not a.endswith(_CERT_SUFFIX) and key_type(a) == key)


def key_types_offered(offered: list[str], allowed: tuple[str, ...], but: str) -> list[str]:
    """Host key types the server offered with an algorithm we allow, in the server's order,
    except ``but``."""
    found: list[str] = []
    for algorithm in offered:
        key = key_type(algorithm)
        if key != but and key not in found and algorithm in allowed:
            found.append(key)
    return found


class OfferRecordingTransport(paramiko.Transport):
    """A Transport that keeps the server's KEXINIT lists, to say what it offered.

    paramiko parses them only into local variables and raises ``IncompatiblePeer``
    without them; the message of ``ssh_incompatible`` must name them.
    """

    offered: dict[str, list[str]] | None = None
    agreed_kex = ""

    def _parse_kex_init(self, m: Message) -> None:
        # A copy is parsed (the message holds the payload after its type byte): m stays unread.
        parsed = self._really_parse_kex_init(Message(m.asbytes()))
        self.offered = {
            "kex": [k for k in parsed["kex_algo_list"]
                    if not k.startswith(("ext-info-", "kex-strict-"))],
            "keys": parsed["server_key_algo_list"],
            "ciphers": _union(parsed["client_encrypt_algo_list"], parsed["server_encrypt_algo_list"]),
            "macs": _union(parsed["client_mac_algo_list"], parsed["server_mac_algo_list"]),
        }
        super()._parse_kex_init(m)
        # paramiko drops its kex engine once the exchange is done; keep the name it chose.
        engine = type(self.kex_engine)
        self.agreed_kex = next((name for name, cls in self._kex_info.items()
                                if cls is engine and name in self.offered["kex"]), "")


def _union(first: list[str], second: list[str]) -> list[str]:
    return first + [n for n in second if n not in first]


def negotiated(transport: OfferRecordingTransport) -> dict[str, str]:
    """The algorithms the finished handshake agreed on, by category."""
    return {
        "kex": transport.agreed_kex,
        "keys": transport.host_key_type or "",
        "ciphers": f"{transport.local_cipher},{transport.remote_cipher}",
        "macs": f"{transport.local_mac},{transport.remote_mac}",
    }


_LABELS = {"kex": "key exchange", "keys": "host key", "ciphers": "ciphers", "macs": "MACs"}


def incompatibility(offered: dict[str, list[str]], allow_legacy: bool) -> str:
    """Why no algorithm matched, naming what the device offered and the setting that helps."""
    usable = {c: getattr(paramiko.Transport, _KNOWN[c]) for c in _LABELS}
    allowed = {c: [n for n in names if allow_legacy or not is_legacy(c, n)] for c, names in usable.items()}
    lacking = [c for c in _LABELS if not set(offered.get(c, ())) & set(allowed[c])]
    if not lacking:
        return "no SSH algorithm in common with the device (compression or another list)"
    shown = "; ".join(f"{_LABELS[c]} {', '.join(offered.get(c, [])[:4]) or 'none'}" for c in lacking)
    text = f"no SSH algorithm in common: the device offers {shown}"
    if not allow_legacy and all(set(offered.get(c, ())) & set(usable[c]) for c in lacking):
        return f"{text} (legacy, not allowed: set {HOW_TO_ALLOW})"
    return f"{text} (not supported by this client)"
