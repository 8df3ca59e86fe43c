#!/usr/bin/env python3
"""Which ways of building a message survive inside a torch C++ extension on this machine.

Builds a tiny extension (``torch.utils.cpp_extension.load_inline``, no CUDA) whose ops return a
string made in one way each (a literal, ``std::to_string``, ``std::ostringstream`` with a string or
a number, ``c10::str`` with a number, a failing ``TORCH_CHECK`` with and without a number), then
calls every op in a fresh process and reports its exit status. On the H200 machine (torch
2.11.0+cu130, g++ 13.3) every way that streams a number through an ostream killed the process
(SIGSEGV) while literals and ``std::to_string`` worked, which is why the CUDA backend's binding
builds its refusal messages with ``std::to_string`` only (``benchmarks/raw/extension_string_probe_*``).

    PYTHONPATH=. python scripts/probe_cxx_strings.py [--build-dir DIR]
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile

SOURCE = r"""
#include <torch/library.h>
#include <c10/util/Exception.h>
#include <sstream>
#include <string>
std::string s_plain(int64_t) { return std::string("a plain string of more than sixteen chars"); }
std::string s_tostr(int64_t n) { return "n=" + std::to_string(n); }
std::string s_oss_str(int64_t) { std::ostringstream o; o << "n=" << "x"; return o.str(); }
std::string s_oss_int(int64_t n) { std::ostringstream o; o << "n=" << n; return o.str(); }
std::string s_c10_str_int(int64_t n) { return c10::str("n=", n); }
std::string s_check_plain(int64_t n) { TORCH_CHECK(n == 0, "boom"); return {}; }
std::string s_check_int(int64_t n) { TORCH_CHECK(n == 0, "boom ", n); return {}; }
TORCH_LIBRARY(samsparse_probe_strings, m) {
  m.def("s_plain(int n) -> str", &s_plain);
  m.def("s_tostr(int n) -> str", &s_tostr);
  m.def("s_oss_str(int n) -> str", &s_oss_str);
  m.def("s_oss_int(int n) -> str", &s_oss_int);
  m.def("s_c10_str_int(int n) -> str", &s_c10_str_int);
  m.def("s_check_plain(int n) -> str", &s_check_plain);
  m.def("s_check_int(int n) -> str", &s_check_int);
}
"""
OPS = ("s_plain", "s_tostr", "s_oss_str", "s_oss_int", "s_c10_str_int", "s_check_plain", "s_check_int")


def call_one(build_dir: str, op: str) -> int:
    """Child process: load the library, call one op with 5, print what came back."""
    import torch

    torch.ops.load_library(glob.glob(os.path.join(build_dir, "*.so"))[0])
    try:
        print("returned", repr(getattr(torch.ops.samsparse_probe_strings, op)(5)), flush=True)
    except RuntimeError as exc:
        print("raised RuntimeError:", str(exc).splitlines()[0], flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", help="where to build the probe library (default: a temporary folder)")
    ap.add_argument("--call", help=argparse.SUPPRESS)  # internal: the child process's op
    args = ap.parse_args(argv)
    if args.call:
        return call_one(args.build_dir, args.call)
    from torch.utils import cpp_extension

    build_dir = args.build_dir or tempfile.mkdtemp(prefix="samsparse_probe_strings_")
    os.makedirs(build_dir, exist_ok=True)
    try:
        cpp_extension.load_inline(name="samsparse_probe_strings", cpp_sources=[SOURCE], build_directory=build_dir,
                                  is_python_module=False, verbose=False)
    except Exception as exc:  # noqa: BLE001 - no compiler here: say so
        print(f"could not build the probe extension: {type(exc).__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    crashed = 0
    for op in OPS:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--build-dir", build_dir, "--call", op],
                              capture_output=True, text=True, timeout=300)
        said = [ln for ln in proc.stdout.splitlines() if ln.startswith(("returned", "raised"))]
        crashed += proc.returncode != 0
        print(f"{op:15s} exit {proc.returncode:4d}  {said[0][:100] if said else ''}")
    print(f"{crashed} of {len(OPS)} ways killed the process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
