# cryo-orient: the pinned environment of the Makefile, in a container.
#
# Default image: LOCK=gpu (requirements/gpu.lock). Its pip wheels bring CUDA and cuDNN
# (tensorflow[and-cuda]) and ASTRA's CUDA build (astra-toolbox 2.5); the host only needs the
# NVIDIA driver and the NVIDIA Container Toolkit, which injects the driver at `docker run --gpus`.
#   docker build -t cryo-orient .
#   docker run --rm --gpus all cryo-orient make reproduce PROFILE=paper
# CPU-only variant (laptops, CI; a smaller image):
#   docker build --build-arg LOCK=cpu -t cryo-orient:cpu .
#   docker run --rm cryo-orient:cpu make test
# Both images also run on a host without a GPU: the library falls back to its CPU NUFFT backend.
# `docker run --rm cryo-orient` alone prints `make help`.
#
# Outputs go to figures/, data/ and build/ under the work dir /home/cryo/cryo-orient; bind-mount
# them to keep them (the container runs as uid 1000, see CRYO_UID below; create the host folders
# first, or Docker creates them owned by root):
#   mkdir -p figures data && docker run --rm --gpus all \
#     -v "$PWD/figures:/home/cryo/cryo-orient/figures" \
#     -v "$PWD/data:/home/cryo/cryo-orient/data" \
#     cryo-orient make reproduce PROFILE=paper
# Offline hosts: mount a folder of the registered input files (data/README.md) and point to it:
#   -v /path/to/mirror:/mirror:ro -e DATA_MIRROR=/mirror
# Mount output folders only, not the whole checkout: the venv lives in /opt/venv, and the install
# stamp is checked against requirements/ and pyproject.toml of the work dir.
#
# .git is not sent to the build (.dockerignore), so datasets simulated in the container record
# git_commit "unknown"; pass `--build-arg GIT_COMMIT="$(git rev-parse HEAD)"` to record the commit
# in the image's label instead.

# A tag is a moving target (Debian security rebuilds). For a published image, pin the digest too:
#   FROM python:3.11.14-slim-bookworm@sha256:<digest of `docker buildx imagetools inspect` it>
FROM python:3.11.14-slim-bookworm

# gpu (default) or cpu: which requirements/<LOCK>.lock `make install` installs.
ARG LOCK=gpu
# Owner of the work dir and the venv; match your host user (`--build-arg CRYO_UID="$(id -u)"
# --build-arg CRYO_GID="$(id -g)"`) so bind-mounted output folders stay writable. Ids from 1000 up
# are free in the base image; lower ones may clash with Debian's system groups and users.
# (Not named UID: bash makes $UID read-only.)
ARG CRYO_UID=1000
ARG CRYO_GID=1000
ARG GIT_COMMIT=unknown

LABEL org.opencontainers.image.title="cryo-orient" \
      org.opencontainers.image.description="Reproduction of Banjac, Donati & Defferrard (2021): figures and tables via make" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.revision="${GIT_COMMIT}"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# make runs everything; git is how the library records the commit in provenance (where a .git exists).
# RELION 3.1.3 (bookworm's package, with OpenMPI's mpirun) is the field's reference that tests of
# the STAR and CTF code and `cryo-orient orient` are checked against; the same packages as the
# native install (README, .ci/run). Versions are not pinned: bookworm's security updates replace old versions in the archive, so
# pinned versions break the build within months; the base image tag fixes the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends git make relion openmpi-bin \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid "${CRYO_GID}" cryo \
 && useradd --no-log-init --create-home --shell /bin/bash --uid "${CRYO_UID}" --gid cryo cryo \
 && install -d -o cryo -g cryo /opt/venv /home/cryo/cryo-orient

# The Makefile reads these from the environment (`?=`), so every `make` target in the container
# uses /opt/venv and its stamp instead of creating a .venv in the work dir.
ENV VENV=/opt/venv \
    LOCK=${LOCK} \
    PYTHON=python3.11 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    MPLBACKEND=Agg \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Numeric, so that runtimes checking runAsNonRoot need not resolve the name.
USER ${CRYO_UID}:${CRYO_GID}
WORKDIR /home/cryo/cryo-orient

# Install layer: only what `make install` reads (lock files, pyproject.toml, Makefile, and lib/
# for the editable install), so editing experiments, tests or docs does not reinstall.
# It is the same target natives run; python3.11 here is the base image's /usr/local/bin one.
# README.md is left out on purpose: setuptools only warns that the long description is missing,
# and a documentation edit would otherwise reinstall everything.
COPY --chown=cryo:cryo requirements/ requirements/
COPY --chown=cryo:cryo pyproject.toml Makefile ./
COPY --chown=cryo:cryo lib/ lib/
RUN make install LOCK="${LOCK}" VENV=/opt/venv PYTHON=python3.11

COPY --chown=cryo:cryo . .
# The second copy rewrites requirements/ and pyproject.toml (same content); refresh the install
# stamp so that make never sees them as newer and reinstalls at run time. The output folders exist
# and belong to cryo even where .dockerignore left them out.
RUN test -f "/opt/venv/.installed-${LOCK}" \
 && touch "/opt/venv/.installed-${LOCK}" \
 && mkdir -p figures data build

CMD ["make", "help"]
