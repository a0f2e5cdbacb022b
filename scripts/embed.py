#!/usr/bin/env python3
"""Turn a file into a C source defining `const char NAME[]` with its bytes
(build step: meson's own Python runs it, nothing else is needed)."""
import sys

src, dst, name = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(src, 'rb').read()
with open(dst, 'w') as out:
    out.write('/* Generated from %s by scripts/embed.py; do not edit. */\n' % src.split('/')[-1])
    out.write('#include <stddef.h>\nconst char %s[] = {\n' % name)
    for i in range(0, len(data), 16):
        out.write('\t' + ', '.join('0x%02x' % b for b in data[i:i + 16]) + ',\n')
    out.write('\t0x00\n};\nconst size_t %s_len = %d;\n' % (name, len(data)))
