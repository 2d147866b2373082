"""addr: addresses as (hi, lo) uint64 words, IPv4 stored IPv4-mapped, against ipaddress."""
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imds_flow.addr import MAPPED_V4, from_hilo, is_v4, network_hilo, to_hilo

M64 = (1 << 64) - 1


def test_ipv4_is_ipv4_mapped_and_ipv6_is_split_in_two_words():
    assert to_hilo("169.254.169.254") == (0, MAPPED_V4 | 0xA9FEA9FE)
    assert to_hilo(ipaddress.IPv4Address("10.0.0.1")) == (0, 0xFFFF_0A00_0001)
    assert to_hilo("fd00:ec2::254") == (0xFD00_0EC2_0000_0000, 0x254)
    assert to_hilo("::ffff:10.0.0.1") == to_hilo("10.0.0.1")      # one form for both spellings
    with pytest.raises(ValueError):
        to_hilo("169.254.169")


@given(st.integers(0, (1 << 32) - 1))
def test_ipv4_round_trip(v):
    ip = ipaddress.IPv4Address(v)
    hi, lo = to_hilo(str(ip))
    assert is_v4(hi, lo) and from_hilo(hi, lo) == str(ip)


@given(st.integers(0, (1 << 128) - 1))
def test_ipv6_round_trip(v):
    ip = ipaddress.IPv6Address(v)
    hi, lo = to_hilo(ip)
    assert (hi << 64 | lo) == v
    assert from_hilo(hi, lo) == (str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip))
    assert is_v4(hi, lo) == (ip.ipv4_mapped is not None)


def test_network_hilo_masks_like_ipaddress():
    assert network_hilo("169.254.169.254") == (0, MAPPED_V4 | 0xA9FEA9FE, M64, M64)
    assert network_hilo("10.66.7.9/16") == (0, MAPPED_V4 | 0x0A420000, M64, M64 ^ 0xFFFF)   # /16 is /112
    assert network_hilo("fd00:ec2::/32") == (0xFD00_0EC2_0000_0000, 0, M64 ^ 0xFFFF_FFFF, 0)
    assert network_hilo("::/0") == (0, 0, 0, 0)
    with pytest.raises(ValueError):
        network_hilo("10.0.0.0/33")


@given(st.integers(0, (1 << 128) - 1), st.integers(0, (1 << 128) - 1), st.integers(0, 128))
def test_network_membership_is_ipaddress_membership(net, addr, prefix):
    cidr = ipaddress.IPv6Network((net, prefix), strict=False)
    nh, nl, mh, ml = network_hilo(str(cidr))
    hi, lo = addr >> 64, addr & M64
    assert ((hi & mh) == nh and (lo & ml) == nl) == (ipaddress.IPv6Address(addr) in cidr)
