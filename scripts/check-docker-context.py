#!/usr/bin/env python3
"""Builds the binary from exactly what the Dockerfile's build stages copy, without Docker.

CI has no Docker engine, so this is how it knows that the images' build context is whole:

1. The build stages (`FROM ... AS build-*`) are read from the Dockerfile: their `COPY` lines
   from the context (not `--from`), in order.
2. The context is the repository's files less what `.dockerignore` excludes (Docker's rules:
   patterns relative to the root, `*`, `?`, `[...]` and `**`, a pattern that matches a folder
   excludes what is under it, `!` re-includes, the last matching line wins).
3. For each stage, a folder is assembled from its `COPY` lines. Every stage must copy the same
   files, so that building one proves the others' context too (the CUDA stage's build also needs
   nvcc, which CI has only for the `cuda` build itself).
4. Every `include_bytes!`/`include_str!` with a literal path, outside `#[cfg(test)]` code, must
   name a file inside the assembled folder.
5. The dependency layer (the files copied before `docker-dependency-stubs.sh` runs) is built
   with the stand-ins and cleaned as the Dockerfile does, then the whole folder: `cargo build
   --release --locked --offline --bin virtualfit`. The target folder, target/docker-context,
   shares the repository's compiled dependencies (hard links of target/release, less this
   crate's own artifacts): cargo gives a crate the same artifact names wherever its folder is,
   so the stand-ins must never land in the repository's own target folder. It is removed once
   the binary has run.

Usage: scripts/check-docker-context.py [--no-build] [--keep DIR] [--dockerfile FILE]
Exits 1 with the reason on the first failure.
"""

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fail(message):
    print(f"check-docker-context: {message}", file=sys.stderr)
    sys.exit(1)


def logical_lines(text):
    """The Dockerfile's instructions, with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        lines.append(current)
        current = ""
    if current:
        lines.append(current)
    return lines


def build_stages(dockerfile):
    """{stage name: [(sources, destination, kind)]} for every `FROM ... AS build-*` stage, where
    kind is 'copy' for a COPY from the context and 'run' for a RUN (sources = the command)."""
    stages, current = {}, None
    for line in logical_lines(dockerfile):
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            match = re.search(r"\s+AS\s+(\S+)\s*$", rest, re.IGNORECASE)
            name = match.group(1) if match else None
            current = name if name and name.startswith("build") else None
            if current:
                stages[current] = []
        elif current and word in ("COPY", "ADD"):
            args = rest.strip()
            if word == "ADD":
                fail(f"stage {current}: ADD is not checked; use COPY: {line}")
            flags = []
            while args.startswith("--"):
                flag, _, args = args.partition(" ")
                flags.append(flag)
                args = args.strip()
            if any(f.startswith("--from") for f in flags):
                continue
            parts = json.loads(args) if args.startswith("[") else args.split()
            if len(parts) < 2:
                fail(f"stage {current}: cannot read {line}")
            stages[current].append((parts[:-1], parts[-1], "copy"))
        elif current and word == "RUN":
            stages[current].append((rest, None, "run"))
    if not stages:
        fail("no build stage (FROM ... AS build-...) in the Dockerfile")
    return stages


def dockerignore_patterns():
    path = os.path.join(ROOT, ".dockerignore")
    patterns = []
    if os.path.exists(path):
        for line in open(path, encoding="utf-8").read().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = os.path.normpath(line[1:] if negate else line).lstrip("/")
            patterns.append((negate, pattern))
    return patterns


def pattern_regex(pattern):
    """Docker's pattern syntax (Go's filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out += re.escape(c)
            else:
                body = pattern[i + 1 : end]
                if body.startswith("^"):
                    body = "!" + body[1:]
                out += fnmatch.translate("[" + body + "]")[4:-3]
                i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile("^" + out + "$")


def ignored(rel, compiled):
    """Whether the context path `rel` is excluded: the last pattern matching it or one of its
    parent folders decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for negate, regex in compiled:
        if any(regex.match(p) for p in prefixes):
            verdict = not negate
    return verdict


def context_files():
    """The repository's files (tracked or not, as `docker build .` would send them), minus the
    .dockerignore exclusions, as paths relative to the root."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    compiled = [(neg, pattern_regex(p)) for neg, p in dockerignore_patterns()]
    return sorted(
        f for f in listed if os.path.isfile(os.path.join(ROOT, f)) and not ignored(f, compiled)
    )


def copied(sources, files):
    """The context files one COPY source names: a file, or everything under a folder. Globs in
    sources are not used by the Dockerfile and are refused."""
    chosen = []
    for src in sources:
        if any(ch in src for ch in "*?["):
            fail(f"COPY source with a pattern is not checked: {src}")
        src = os.path.normpath(src).lstrip("/")
        if src == ".":
            chosen.extend((f, f) for f in files)
            continue
        hits = [f for f in files if f == src or f.startswith(src + "/")]
        if not hits:
            fail(f"COPY {src}: nothing in the build context (missing, or excluded by .dockerignore)")
        chosen.extend((f, f[len(src) :].lstrip("/")) for f in hits)
    return chosen


def assemble(steps, files, folder):
    """Copies each COPY's files into `folder` (the stage's WORKDIR); returns the context paths
    copied before the first RUN, and all of them."""
    before_run, everything, seen_run = set(), set(), False
    for sources, dest, kind in steps:
        if kind == "run":
            seen_run = True
            continue
        picked = copied(sources, files)
        dest_is_dir = dest.endswith("/") or len(picked) > 1 or len(sources) > 1
        for src_path, tail in picked:
            if dest_is_dir or os.path.isdir(os.path.join(ROOT, sources[0])):
                target = os.path.join(dest, tail) if tail else os.path.join(dest, os.path.basename(src_path))
            else:
                target = dest
            target = os.path.normpath(target).lstrip("/")
            out = os.path.join(folder, target)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, src_path), out)
            everything.add(target)
            if not seen_run:
                before_run.add(target)
    return before_run, everything


INCLUDE = re.compile(r'include_(?:bytes|str)!\(\s*"([^"]+)"\s*\)')
TEST_MODULE = re.compile(r"^#\[cfg\(test\)\]\s*$")


def check_includes(folder):
    missing = []
    for dirpath, _, names in os.walk(folder):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            test_code = False
            for number, line in enumerate(open(path, encoding="utf-8"), 1):
                # Test modules sit at the end of their files and are not compiled here.
                if TEST_MODULE.match(line):
                    test_code = True
                if test_code:
                    continue
                for included in INCLUDE.findall(line):
                    target = os.path.normpath(os.path.join(dirpath, included))
                    if not target.startswith(folder + os.sep) or not os.path.isfile(target):
                        rel = os.path.relpath(path, folder)
                        missing.append(f"{rel}:{number} includes {included}, not in the build context")
    return missing


def seeded_target(root_release, target_dir):
    """A target folder whose release/ holds hard links of the repository's compiled
    dependencies, without this crate's artifacts."""
    shutil.rmtree(target_dir, ignore_errors=True)
    os.makedirs(target_dir)
    release = os.path.join(target_dir, "release")
    if os.path.isdir(root_release):
        subprocess.run(["cp", "-al", root_release, release], check=True)
    else:
        os.makedirs(release)
    for sub in (".fingerprint", "deps", "build", "incremental", "."):
        folder = os.path.join(release, sub)
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if name.startswith(("virtualfit-", "libvirtualfit-")) or (sub == "." and name == "virtualfit"):
                path = os.path.join(folder, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)


def cargo_build(folder, target_dir):
    env = dict(os.environ, CARGO_TARGET_DIR=target_dir)
    cmd = ["cargo", "build", "--release", "--locked", "--offline", "--bin", "virtualfit"]
    print(f"check-docker-context: {' '.join(cmd)} in {folder}", flush=True)
    done = subprocess.run(cmd, cwd=folder, env=env)
    if done.returncode != 0:
        fail(f"`{' '.join(cmd)}` failed in the assembled context {folder}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-build", action="store_true", help="assemble and scan only")
    parser.add_argument("--keep", help="assemble into this folder and keep it")
    parser.add_argument(
        "--dockerfile",
        default=os.path.join(ROOT, "Dockerfile"),
        help="the Dockerfile to read (default: the repository's)",
    )
    args = parser.parse_args()

    stages = build_stages(open(args.dockerfile, encoding="utf-8").read())
    files = context_files()
    work = args.keep or tempfile.mkdtemp(prefix="docker-context-")
    assembled = {}
    for name, steps in stages.items():
        folder = os.path.join(work, name)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        assembled[name] = (folder, *assemble(steps, files, folder))
        print(f"check-docker-context: stage {name}: {len(assembled[name][2])} files", flush=True)
    names = sorted(assembled)
    for other in names[1:]:
        if assembled[other][2] != assembled[names[0]][2]:
            only = sorted(assembled[other][2] ^ assembled[names[0]][2])
            fail(f"stages {names[0]} and {other} copy different files: {only[:10]}")
    folder, manifest_layer, _ = assembled[names[0]]
    missing = check_includes(folder)
    if missing:
        fail("\n  ".join(["embedded files outside the build context:"] + missing))
    if not any("docker-dependency-stubs.sh" in f for f in manifest_layer):
        fail("the dependency layer does not copy scripts/docker-dependency-stubs.sh")
    if not args.no_build:
        target_dir = os.path.join(ROOT, "target", "docker-context")
        seeded_target(os.path.join(ROOT, "target", "release"), target_dir)
        stubs_env = dict(os.environ, CARGO_TARGET_DIR=target_dir)
        # The dependency layer: the manifests and the stand-ins, as the first RUN builds them.
        deps = os.path.join(work, "dependency-layer")
        shutil.rmtree(deps, ignore_errors=True)
        os.makedirs(deps)
        for rel in manifest_layer:
            os.makedirs(os.path.dirname(os.path.join(deps, rel)), exist_ok=True)
            shutil.copy2(os.path.join(folder, rel), os.path.join(deps, rel))
        stubs = ["sh", "scripts/docker-dependency-stubs.sh"]
        subprocess.run(stubs, cwd=deps, env=stubs_env, check=True)
        cargo_build(deps, target_dir)
        subprocess.run(stubs + ["--clean"], cwd=deps, env=stubs_env, check=True)
        cargo_build(folder, target_dir)
        binary = os.path.join(target_dir, "release", "virtualfit")
        done = subprocess.run([binary, "--version"], capture_output=True, text=True)
        if done.returncode != 0 or "virtualfit" not in done.stdout:
            fail(f"the binary built from the context does not run: {done.stdout}{done.stderr}")
        # Its own build outputs (this crate's, and any dependency rebuilt) are only a proof.
        shutil.rmtree(target_dir, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print("check-docker-context: the build stages' context is whole")


if __name__ == "__main__":
    main()
