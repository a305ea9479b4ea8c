"""Write large.c: a WAGI handler whose module is several megabytes of distinct code.

It stands in for big guests (language runtimes, say) when measuring compile time,
the compiled cache and cold start.
"""

import sys

FUNCTIONS = int(sys.argv[1]) if len(sys.argv) > 1 else 6000

lines = ["#include <stdio.h>", "typedef unsigned (*step)(unsigned);"]
for n in range(FUNCTIONS):
    lines.append(
        f"static unsigned f{n}(unsigned x) {{"
        f" for (unsigned i = 0; i < (x & 7u) + {n % 5 + 1}u; i++)"
        f" x = x * {2 * n + 3}u + (x >> {n % 13 + 1}) ^ {n * 2654435761 % 4294967296}u;"
        f" return x + {n}u; }}"
    )
lines.append("static const step steps[] = {" + ", ".join(f"f{n}" for n in range(FUNCTIONS)) + "};")
lines.append(
    "int main(void) { unsigned x = 1; for (unsigned i = 0; i < 64; i++)"
    f" x = steps[(x + i) % {FUNCTIONS}](x);"
    ' printf("Content-Type: text/plain\\n\\nlarge module says %u\\n", x); return 0; }'
)
print("\n".join(lines))
