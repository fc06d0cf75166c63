#!/usr/bin/env python3
# The initramfs of tools/avx512-emu/run.sh: mkcpio.py OUT.cpio.gz NAME=FILE ... writes a
# gzip-compressed newc archive with /dev/console, /dev/null and the given files.
import sys, os, gzip
out = sys.argv[1]; entries = [a.split('=', 1) for a in sys.argv[2:]]
ino = [1]
def hdr(name, mode, size, rdevmaj=0, rdevmin=0, nlink=1):
    ino[0] += 1
    f = [ino[0], mode, 0, 0, nlink, 0, size, 0, 0, rdevmaj, rdevmin, len(name) + 1, 0]
    h = b'070701' + b''.join(b'%08X' % x for x in f) + name.encode() + b'\0'
    return h + b'\0' * ((4 - len(h) % 4) % 4)
def pad(d): return d + b'\0' * ((4 - len(d) % 4) % 4)
buf = b''
for d in ['dev', 'proc', 'sys', 'tmp']: buf += hdr(d, 0o40755, 0, nlink=2)
buf += hdr('dev/console', 0o20600, 0, 5, 1)
buf += hdr('dev/null', 0o20666, 0, 1, 3)
for name, src in entries:
    data = open(src, 'rb').read()
    mode = 0o100755 if os.access(src, os.X_OK) else 0o100644
    buf += hdr(name, mode, len(data)) + pad(data)
buf += hdr('TRAILER!!!', 0, 0)
with gzip.open(out, 'wb', compresslevel=6) as f: f.write(buf)
