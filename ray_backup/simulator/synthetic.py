"""A hand-written RouterOS 6 device (hAP ac lite, 6.49.10, default configuration).

Every real capture is RouterOS 7.10+, so RouterOS 6 devices are based on this
instead. It is SYNTHETIC: written from RouterOS 6 defconf exports, not recorded;
do not use it as evidence of what a device prints. Logical lines are listed
unwrapped and wrapped here the way RouterOS wraps them.
"""

from __future__ import annotations

from ray_backup.simulator.rosconfig import wrap

NAME = "synthetic-hAPaclite_6.49.10"

_HEADER = """\
# jan/02/2024 11:07:28 by RouterOS 6.49.10
# software id = 8I3H-6RZP
#
# model = RB952Ui-5ac2nD
# serial number = A1B20C3D4E5F"""

_BODY = """\
/interface bridge
add admin-mac=00:00:5E:00:53:10 auto-mac=no comment=defconf name=bridge
/interface wireless
set [ find default-name=wlan1 ] band=2ghz-b/g/n channel-width=20/40mhz-XX disabled=no distance=indoors frequency=auto installation=indoor mode=ap-bridge ssid=MikroTik-5301A2 wireless-protocol=802.11
set [ find default-name=wlan2 ] band=5ghz-a/n/ac channel-width=20/40/80mhz-XXXX disabled=no distance=indoors frequency=auto installation=indoor mode=ap-bridge ssid=MikroTik-5301A3 wireless-protocol=802.11
/interface list
add comment=defconf name=WAN
add comment=defconf name=LAN
/interface wireless security-profiles
set [ find default=yes ] authentication-types=wpa2-psk mode=dynamic-keys supplicant-identity=MikroTik wpa2-pre-shared-key=defconf-wifi-key
/ip hotspot profile
set [ find default=yes ] html-directory=flash/hotspot
/ip pool
add name=dhcp ranges=192.168.88.10-192.168.88.254
/ip dhcp-server
add address-pool=dhcp disabled=no interface=bridge name=defconf
/interface bridge port
add bridge=bridge comment=defconf interface=ether2
add bridge=bridge comment=defconf interface=ether3
add bridge=bridge comment=defconf interface=ether4
add bridge=bridge comment=defconf interface=ether5
add bridge=bridge comment=defconf interface=wlan1
add bridge=bridge comment=defconf interface=wlan2
/ip neighbor discovery-settings
set discover-interface-list=LAN
/interface list member
add comment=defconf interface=bridge list=LAN
add comment=defconf interface=ether1 list=WAN
/ip address
add address=192.168.88.1/24 comment=defconf interface=bridge network=192.168.88.0
/ip dhcp-client
add comment=defconf disabled=no interface=ether1
/ip dhcp-server network
add address=192.168.88.0/24 comment=defconf gateway=192.168.88.1
/ip dns
set allow-remote-requests=yes
/ip dns static
add address=192.168.88.1 comment=defconf name=router.lan
/ip firewall filter
add action=accept chain=input comment="defconf: accept established,related,untracked" connection-state=established,related,untracked
add action=drop chain=input comment="defconf: drop invalid" connection-state=invalid
add action=accept chain=input comment="defconf: accept ICMP" protocol=icmp
add action=accept chain=input comment="defconf: accept to local loopback (for CAPsMAN)" dst-address=127.0.0.1
add action=drop chain=input comment="defconf: drop all not coming from LAN" in-interface-list=!LAN
add action=accept chain=forward comment="defconf: accept in ipsec policy" ipsec-policy=in,ipsec
add action=accept chain=forward comment="defconf: accept out ipsec policy" ipsec-policy=out,ipsec
add action=fasttrack-connection chain=forward comment="defconf: fasttrack" connection-state=established,related
add action=accept chain=forward comment="defconf: accept established,related, untracked" connection-state=established,related,untracked
add action=drop chain=forward comment="defconf: drop invalid" connection-state=invalid
add action=drop chain=forward comment="defconf: drop all from WAN not DSTNATed" connection-nat-state=!dstnat connection-state=new in-interface-list=WAN
/ip firewall nat
add action=masquerade chain=srcnat comment="defconf: masquerade" ipsec-policy=out,none out-interface-list=WAN
/system clock
set time-zone-name=Europe/Riga
/tool mac-server
set allowed-interface-list=LAN
/tool mac-server mac-winbox
set allowed-interface-list=LAN"""

_RESOURCE = """\
                   uptime: 3w2d4h11m52s
                  version: 6.49.10 (long-term)
               build-time: Sep/06/2023 11:26:57
         factory-software: 6.44.6
              free-memory: 27.2MiB
             total-memory: 64.0MiB
                      cpu: MIPS 24Kc V7.4
                cpu-count: 1
            cpu-frequency: 650MHz
                 cpu-load: 2%
           free-hdd-space: 3.5MiB
          total-hdd-space: 16.0MiB
  write-sect-since-reboot: 2231
         write-sect-total: 94512
               bad-blocks: 0%
        architecture-name: mipsbe
               board-name: hAP ac lite
                 platform: MikroTik"""

_PACKAGE_UPDATE = """\
            channel: long-term
  installed-version: 6.49.10"""

COMMANDS = {
    "/system resource print": _RESOURCE,
    "/system package update print": _PACKAGE_UPDATE,
    "/export show-sensitive": _HEADER + "\n" + "\n".join(wrap(line) for line in _BODY.split("\n")),
    "quit": "interrupted",
}
