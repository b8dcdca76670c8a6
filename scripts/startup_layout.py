"""The Python half of scripts/startup-layout: the functions server/startup.ld names, from a profile
of `gantry serve` (write), and how many of them an unstripped release binary still has (check).

    python3 scripts/startup_layout.py write CALLGRIND_DUMP BINARY NM_SYMBOLS OUT
    python3 scripts/startup_layout.py check NM_SYMBOLS LAYOUT
"""
import re
import sys

# A name that many functions share once hashed away (a generic function's instances) is named
# exactly; at most this many share a wildcard (an async function's state machine and its drop,
# say, whose hashes change with its body).
FEW = 4


def wildcard(name):
    """The symbol with its hashes as wildcards."""
    pattern = re.sub(r'17h[0-9a-f]{16}E', '17h*E', name)  # legacy mangling's hash
    if pattern.startswith('_R'):
        pattern = re.sub(r'Cs[0-9A-Za-z]+_', 'Cs*_', pattern)  # v0 mangling's crate disambiguators
    return exact(pattern)


def exact(name):
    """The symbol, whichever local copy of it LLVM numbered."""
    return re.sub(r'\.\d+$', '.*', name)


def functions(symbols):
    """The functions in `nm --defined-only` output."""
    for line in open(symbols):
        fields = line.split()
        if len(fields) == 3 and fields[1] in 'tTwW':
            yield fields[2]


def ran_in(dump, binary):
    """The functions of `binary` that ran, in the order callgrind first lists them."""
    names, objects, ran, current = {}, {}, [], None

    def name_of(table, value):
        m = re.match(r'\((\d+)\)(?: (.*))?', value)
        if not m:
            return value
        if m.group(2) is not None:
            table[m.group(1)] = m.group(2)
        return table.get(m.group(1))

    for line in open(dump):
        key, _, value = line.rstrip('\n').partition('=')
        if key == 'ob':
            current = name_of(objects, value)
        elif key == 'cob':
            name_of(objects, value)
        elif key == 'fn':
            name = name_of(names, value)
            if current == binary:
                ran.append(re.sub(r"'\d+$", '', name))
        elif key == 'cfn':
            name_of(names, value)
    return ran


def write(dump, binary, symbols, out):
    instances = {}
    for name in functions(symbols):
        instances[wildcard(name)] = instances.get(wildcard(name), 0) + 1
    patterns, seen = [], set()
    for name in ran_in(dump, binary):
        if not re.fullmatch(r'[A-Za-z0-9_$.]+', name):
            continue
        pattern = wildcard(name) if instances.get(wildcard(name), 0) <= FEW else exact(name)
        if pattern not in seen:
            seen.add(pattern)
            patterns.append(pattern)
    with open(out, 'w') as f:
        f.write('/* Written by scripts/startup-layout: the functions `gantry serve` runs to start and idle, first\n'
                '   in the code (server/build.rs). LLVM names a cold function\'s section .text.unlikely. */\n')
        f.write('SECTIONS\n{\n  .text.gantry_startup :\n  {\n')
        for p in patterns:
            f.write(f'    *(.text.{p} .text.unlikely.{p})\n')
        f.write('  }\n}\nINSERT BEFORE .text;\n')
    print(f'startup-layout: {len(patterns)} functions in {out}')


def check(symbols, layout):
    """Exit 1 when over 5% of the functions `layout` names are not in the binary."""
    named = set()
    for name in functions(symbols):
        named.update((wildcard(name), exact(name)))
    patterns = re.findall(r'^    \*\(\.text\.(\S+) ', open(layout).read(), re.M)
    missing = [p for p in patterns if p not in named]
    print(f'startup-layout: {len(missing)} of the {len(patterns)} functions {layout} names are not in the binary')
    for p in missing[:5]:
        print(f'  for one: {p}')
    if len(missing) * 20 > len(patterns):
        print('startup-layout: run scripts/startup-layout and commit server/startup.ld: an idle server '
              'keeps more of the binary resident without it (README, "Idle memory")')
        sys.exit(1)


if __name__ == '__main__':
    {'write': write, 'check': check}[sys.argv[1]](*sys.argv[2:])
