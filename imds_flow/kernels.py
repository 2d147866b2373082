"""Pure detection kernels on ndarrays and scalars: no dicts, no logging, no config.

Addresses are (hi, lo) uint64 pairs (addr.py); a network is (net_hi, net_lo, mask_hi, mask_lo,
is_v4) in five parallel arrays. An IPv6 network never contains an IPv4(-mapped) address, so
::/0 means "all IPv6", as an operator reads it. detect.py builds the tables once.
"""
from __future__ import annotations

import numpy as np

from .flows import HTTP, NAT_DST, NAT_SRC
from .jit import njit

__all__ = ["match_net", "match_nets", "detect_batch", "REQUEST", "RESPONSE"]

REQUEST = 0
RESPONSE = 1


@njit
def match_net(hi, lo, net_hi, net_lo, mask_hi, mask_lo, net_v4):
    """Index of the first network containing (hi, lo), or -1."""
    v4 = hi == 0 and (lo >> np.uint64(32)) == np.uint64(0xFFFF)
    for e in range(net_hi.shape[0]):
        if (hi & mask_hi[e]) == net_hi[e] and (lo & mask_lo[e]) == net_lo[e] and net_v4[e] == v4:
            return e
    return -1


@njit
def match_nets(hi, lo, net_hi, net_lo, mask_hi, mask_lo, net_v4, out):
    """out[i] = whether address (hi[i], lo[i]) lies in any of the networks."""
    for i in range(hi.shape[0]):
        out[i] = match_net(hi[i], lo[i], net_hi, net_lo, mask_hi, mask_lo, net_v4) >= 0


@njit
def detect_batch(c, n, ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4, sup_hi, sup_lo, sup_mhi, sup_mlo, sup_v4,
                 vlan_suppressed, n_endpoints, n_urls, out_idx, out_ep, out_dir):
    """Find records that touch an endpoint and are not suppressed.

    A destination (or post-NAT destination) in an endpoint is a request; otherwise a source in one
    is a response. A record that matches no address but carries a configured URL substring
    (c.url >= 0) is a request to pseudo-endpoint n_endpoints + url; else one whose sampled HTTP
    request names a configured header field (flag HTTP, c.headers bit k) is a request to
    pseudo-endpoint n_endpoints + n_urls + k (the lowest such k). Suppressed when the local
    side (the one that is not the endpoint) is in a suppressed subnet or any VLAN it carries is
    flagged in vlan_suppressed (bool[4096]). Writes hits to out_*; returns (hits, suppressed).
    """
    hits = 0
    suppressed = 0
    for i in range(n):
        flags = c.flags[i]
        direction = REQUEST
        ep = match_net(c.dst_hi[i], c.dst_lo[i], ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4)
        if ep < 0 and flags & NAT_DST:
            ep = match_net(c.ndst_hi[i], c.ndst_lo[i], ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4)
        if ep < 0:
            direction = RESPONSE
            ep = match_net(c.src_hi[i], c.src_lo[i], ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4)
            if ep < 0 and flags & NAT_SRC:
                ep = match_net(c.nsrc_hi[i], c.nsrc_lo[i], ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4)
        if ep < 0:
            if c.url[i] >= 0:
                ep = n_endpoints + c.url[i]
            elif flags & HTTP and c.headers[i] != 0:
                h = c.headers[i]
                k = 0
                while (h >> np.uint32(k)) & np.uint32(1) == 0:
                    k += 1
                ep = n_endpoints + n_urls + k
            else:
                continue
            direction = REQUEST
        if direction == REQUEST:
            local_hi = c.src_hi[i]
            local_lo = c.src_lo[i]
        else:
            local_hi = c.dst_hi[i]
            local_lo = c.dst_lo[i]
        if match_net(local_hi, local_lo, sup_hi, sup_lo, sup_mhi, sup_mlo, sup_v4) >= 0 or _vlan_hit(c, i, vlan_suppressed):
            suppressed += 1
            continue
        out_idx[hits] = i
        out_ep[hits] = ep
        out_dir[hits] = direction
        hits += 1
    return hits, suppressed


@njit
def _vlan_hit(c, i, table):
    for v in (c.vlan_src[i], c.vlan_dst[i], c.vlan_dot1q[i], c.vlan_cust[i]):
        if 0 <= v < 4096 and table[v]:
            return True
    return False
