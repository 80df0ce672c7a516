"""Build emitted C into a standalone program (so it can run under sanitizers)
and call it with NumPy arrays through files."""

import subprocess
from pathlib import Path

import numpy as np

from convgen.codegen.c import CFiles

STRICT_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
SANITIZE_FLAGS = ["-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer"]

_MAIN = """#include <stdio.h>
#include <stdlib.h>
#include "{name}.h"

/* Each array is read from its file into a buffer of exactly its size, so any
   read or write past its end is caught by the address sanitizer. */
static void *load(const char *path, size_t bytes)
{{
    void *data = malloc(bytes);
    FILE *file = fopen(path, "rb");
    if (data == NULL || file == NULL || fread(data, 1, bytes, file) != bytes) {{
        exit(3);
    }}
    fclose(file);
    return data;
}}

int main(int argc, char **argv)
{{
    FILE *file;
    if (argc != {argc}) {{
        return 2;
    }}
{loads}
    {name}({args});
    file = fopen(argv[{argc} - 1], "wb");
    if (file == NULL || fwrite({output}, 1, {output_size}u, file) != {output_size}u) {{
        return 4;
    }}
    fclose(file);
{frees}
    return 0;
}}
"""


def build_program(files: CFiles, params, folder: Path, flags, output: str | None = None) -> Path:
    """params: the kernel's (name, size in bytes) in call order; `output` names the
    one written back (default: the last)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{files.name}.h").write_text(files.header)
    (folder / f"{files.name}.c").write_text(files.source)
    loads = "\n".join(f"    void *{n} = load(argv[{i + 1}], {size}u);" for i, (n, size) in enumerate(params))
    frees = "\n".join(f"    free({n});" for n, _ in params)
    output, output_size = next(p for p in params if p[0] == output) if output else params[-1]
    (folder / "main.c").write_text(_MAIN.format(
        name=files.name, argc=len(params) + 2, loads=loads, frees=frees, output=output,
        output_size=output_size, args=", ".join(n for n, _ in params)))
    program = folder / "program"
    command = ["gcc", *STRICT_FLAGS, *flags, "-o", str(program), str(folder / "main.c"),
               str(folder / f"{files.name}.c")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr}"
    return program


def run_program(program: Path, arrays: dict[str, np.ndarray], output: np.ndarray) -> np.ndarray:
    """Feed arrays (in call order, the output poisoned) through files; return the output."""
    folder = program.parent
    paths = []
    for name, array in arrays.items():
        path = folder / f"{name}.bin"
        np.ascontiguousarray(array).tofile(path)
        paths.append(str(path))
    result_path = folder / "result.bin"
    result = subprocess.run([str(program), *paths, str(result_path)], capture_output=True, text=True)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    return np.fromfile(result_path, dtype=output.dtype).reshape(output.shape)
