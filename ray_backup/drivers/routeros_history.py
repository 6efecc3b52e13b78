"""What the history needs to know about RouterOS exports: sections, items, secret fields.

Data only; ``history/sections.py`` and ``history/mask.py`` apply it. A section
starts at a menu line (``/ip firewall filter``) and runs to the next one; an
item is one ``add``/``set`` line in it.
"""

from __future__ import annotations

import re

# A menu line: "/" then the menu path, alone on the line.
SECTION_HEADER = re.compile(r"^/([a-z0-9][a-z0-9 .-]*)$")

# Lines that are not items: blank lines and comments (the export header, notes).
NOT_AN_ITEM = re.compile(r"^\s*(#.*)?$")

# What one item of a section is called in a summary: (singular, plural).
# The rest fall back to the menu's last word + "entry" ("Added 1 pool entry").
ITEM_NOUNS: dict[str, tuple[str, str]] = {
    "ip/firewall/filter": ("filter rule", "filter rules"),
    "ip/firewall/nat": ("NAT rule", "NAT rules"),
    "ip/firewall/mangle": ("mangle rule", "mangle rules"),
    "ip/firewall/raw": ("raw rule", "raw rules"),
    "ipv6/firewall/filter": ("IPv6 filter rule", "IPv6 filter rules"),
    "ipv6/firewall/raw": ("IPv6 raw rule", "IPv6 raw rules"),
    "ip/firewall/address-list": ("address-list entry", "address-list entries"),
    "ipv6/firewall/address-list": ("IPv6 address-list entry", "IPv6 address-list entries"),
    "ip/address": ("address", "addresses"),
    "ipv6/address": ("IPv6 address", "IPv6 addresses"),
    "ip/route": ("route", "routes"),
    "ipv6/route": ("IPv6 route", "IPv6 routes"),
    "ip/pool": ("pool", "pools"),
    "ip/dns/static": ("static DNS entry", "static DNS entries"),
    "ip/dhcp-server": ("DHCP server", "DHCP servers"),
    "ip/dhcp-server/lease": ("DHCP lease", "DHCP leases"),
    "ip/dhcp-server/network": ("DHCP network", "DHCP networks"),
    "ip/dhcp-client": ("DHCP client", "DHCP clients"),
    "interface/bridge": ("bridge", "bridges"),
    "interface/bridge/port": ("bridge port", "bridge ports"),
    "interface/bridge/vlan": ("bridge VLAN", "bridge VLANs"),
    "interface/vlan": ("VLAN interface", "VLAN interfaces"),
    "interface/ethernet": ("ethernet interface", "ethernet interfaces"),
    "interface/list": ("interface list", "interface lists"),
    "interface/list/member": ("interface list member", "interface list members"),
    "interface/pppoe-client": ("PPPoE client", "PPPoE clients"),
    "interface/wireguard": ("WireGuard interface", "WireGuard interfaces"),
    "interface/wireguard/peers": ("WireGuard peer", "WireGuard peers"),
    "interface/wireless/security-profiles": ("security profile", "security profiles"),
    "ppp/secret": ("PPP secret", "PPP secrets"),
    "user": ("user", "users"),
    "snmp/community": ("SNMP community", "SNMP communities"),
    "system/scheduler": ("scheduled task", "scheduled tasks"),
    "system/script": ("script", "scripts"),
}

# A "set" line without a selector changes the menu's settings (/ip dns set servers=...).
SETTINGS_NOUNS = ("setting line", "setting lines")

# Properties that name an item, so that a removed line and an added line with the
# same value are one *modified* item. Order matters: the first one present wins.
IDENTITY_KEYS = ("name", "default-name", "comment", "address", "interface", "mac-address")

# Properties whose values are secrets: RouterOS hides them in `/export hide-sensitive`
# (and in a plain RouterOS 7 export). A key is secret when it is one of these or ends
# with "-" + one of them (wpa2-pre-shared-key, authentication-password, ipsec-secret).
SECRET_KEYS = (
    "password",            # /ppp secret, /tool e-mail, pppoe/sstp/ovpn clients, hotspot users
    "secret",              # /radius, /ip ipsec identity, l2tp/eoip ipsec-secret
    "passphrase",          # /interface wifi security (RouterOS 7 wifi)
    "private-key",         # /interface wireguard (and peers with a client config)
    "preshared-key",       # /interface wireguard peers
    "pre-shared-key",      # wireless security profiles (wpa-, wpa2-)
    "authentication-key",  # /routing ospf interface templates
    "auth-key",            # /routing ospf, rip
    "md5-key",             # /routing bgp connection tcp-md5-key
    "key",                 # /system ntp key, ipsec keys
)
# WEP keys: static-key-0 .. static-key-3, static-sta-private-key (matched above).
SECRET_KEY_PATTERN = re.compile(
    r"^(?:[a-z0-9.-]*[-.])?(?:" + "|".join(re.escape(k) for k in SECRET_KEYS) + r")$"
    r"|^static-key-\d$"
)
# Keys that end like a secret but are public by design.
NOT_SECRET_KEYS = frozenset({"public-key", "host-key", "key-size", "ssh-key"})
