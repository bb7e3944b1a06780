#!/usr/bin/env python3
"""CPU model of IndexedSchedule::next with 128-key tiles (templates/indexed.cu.tera, branch pending-pairs):
any two ranges with the same halves share a tile. Checks on 3000 random pairs of sorted lists that every
range of each half is visited exactly once by tiles that list the half, and prints the tile counts of a
banded and a scattered 128-row block."""
import random
NO=None
def tiles(r0, r1, scale=1):
    lists=[r0,r1]; nxt=[0,0]; pend={}; out=[]
    def peek():
        best=None; mem=0
        for h in range(2):
            if nxt[h]>=len(lists[h]): continue
            st=lists[h][nxt[h]]*scale
            if best is None or st<best: best=st; mem=1<<h
            elif st==best: mem|=1<<h
        return best,mem
    def consume(m):
        for h in range(2): nxt[h]+= (m>>h)&1
    while True:
        emitted=False
        st,m=peek()
        while st is not None:
            consume(m)
            if m in pend:
                out.append((pend.pop(m), st, 128, m)); emitted=True; break
            pend[m]=st
            st,m=peek()
        if emitted: continue
        if pend:
            m=min(pend); s=pend.pop(m); out.append((s, s+64, 64, m)); continue
        break
    return out
def check(r0,r1):
    out=tiles(r0,r1)
    cover={0:[],1:[]}
    for a,b,w,m in out:
        runs=[a] if w==64 else [a,b]
        for h in range(2):
            if m>>h&1: cover[h]+=runs
    assert sorted(cover[0])==sorted(r0), (cover[0], r0)
    assert sorted(cover[1])==sorted(r1)
    return out
random.seed(1)
for trial in range(3000):
    n=random.randint(0,40)
    r0=sorted(random.sample(range(0,5000),random.randint(0,30)))
    r1=sorted(set(random.sample(r0,len(r0)//2) + random.sample(range(0,5000),random.randint(0,30))))
    check(r0,r1)
def old_tiles(r0, r1):
    """The schedule before: a range pairs only with the very next range, if it has the same halves."""
    lists = [r0, r1]; nxt = [0, 0]; out = []
    def peek():
        best = None; mem = 0
        for h in range(2):
            if nxt[h] >= len(lists[h]): continue
            st = lists[h][nxt[h]]
            if best is None or st < best: best = st; mem = 1 << h
            elif st == best: mem |= 1 << h
        return best, mem
    def consume(m):
        for h in range(2): nxt[h] += (m >> h) & 1
    while True:
        st, m = peek()
        if st is None: break
        consume(m); w = 64
        st2, m2 = peek()
        if st2 is not None and m2 == m: consume(m); w = 128
        out.append((st, w, m))
    return out
e = 128 * 100
band0 = list(range(e - 6159, e, 64)); band1 = [x + 64 for x in band0]
t = check(band0, band1)
print("banded block: tiles", len(t), "old", len(old_tiles(band0, band1)))
random.seed(5)
for e in (128 * 100, 128 * 1000):
    for n in (800, 3000):
        sc = sorted(random.sample(range(0, e), min(n, e - 1)))
        s0 = sorted(e - 64 - s for s in sc if e - 64 - s >= 0); s1 = sorted(e - s for s in sc)
        t = check(s0, s1); o = old_tiles(s0, s1)
        print(f"scattered block at {e} keys, {n} diagonals: tiles {len(t)} ({sum(1 for x in t if x[2] == 128)} of 128 keys), "
              f"old {len(o)} ({sum(1 for x in o if x[1] == 128)} of 128 keys)")
print("ok")
