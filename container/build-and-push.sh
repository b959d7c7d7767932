#!/usr/bin/env bash
# Build the worker images (cpu and nvidia) for linux/amd64 and linux/arm64, push them to the stack's
# ECR repository, and print the image URIs the template's WorkerImageUri / GpuWorkerImageUri take.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: container/build-and-push.sh (--stack NAME | --repository URI) [options]

  --stack NAME        read the ECR repository from the stack's WorkerRepositoryUri output
  --repository URI    push here instead (ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME)
  --region REGION     AWS region (default: AWS_REGION, else the one in the repository URI)
  --tag TAG           image tag (default: the git commit, with -dirty for uncommitted changes)
  --platforms LIST    default linux/amd64,linux/arm64
  --only cpu|nvidia   build one of the two images
  --source URL        the repository, for the image's org.opencontainers.image.source label
                      (default: git's remote.origin.url, without any credentials in it)

Needs the AWS CLI, and Docker with buildx. On an x86 machine, building arm64 needs QEMU's binfmt
handlers once: docker run --privileged --rm tonistiigi/binfmt --install arm64

Prints (stdout, the last lines):
  WorkerImageUri=REPOSITORY@sha256:...
  GpuWorkerImageUri=REPOSITORY@sha256:...
EOF
}

stack="" repo="" region="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}" tag="" only="" source_url=""
platforms="linux/amd64,linux/arm64"
while [ $# -gt 0 ]; do
  case "$1" in
    --stack) stack="${2:?--stack needs a name}"; shift 2 ;;
    --repository) repo="${2:?--repository needs a URI}"; shift 2 ;;
    --region) region="${2:?--region needs a region}"; shift 2 ;;
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    --platforms) platforms="${2:?--platforms needs a list}"; shift 2 ;;
    --only) only="${2:?--only needs cpu or nvidia}"; shift 2 ;;
    --source) source_url="${2:?--source needs a URL}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-and-push: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case "$only" in ""|cpu|nvidia) ;; *) echo "build-and-push: --only takes cpu or nvidia, not '$only'" >&2; exit 2 ;; esac

cd "$(dirname "$0")/.."  # the build context is the repository root: ffleet is installed from it

if [ -z "$repo" ]; then
  if [ -z "$stack" ]; then
    echo "build-and-push: give --stack NAME (its WorkerRepositoryUri output) or --repository URI" >&2
    exit 2
  fi
  repo="$(aws cloudformation describe-stacks --stack-name "$stack" ${region:+--region "$region"} \
    --query "Stacks[0].Outputs[?OutputKey=='WorkerRepositoryUri'].OutputValue" --output text)"
  if [ -z "$repo" ] || [ "$repo" = "None" ]; then
    echo "build-and-push: stack '$stack' has no WorkerRepositoryUri output (is it deployed?)" >&2
    exit 1
  fi
fi
registry="${repo%%/*}"
if [ -z "$region" ]; then
  region="$(echo "$registry" | cut -d. -f4)"  # ACCOUNT.dkr.ecr.REGION.amazonaws.com
fi
if [ -z "$tag" ]; then
  tag="$(git rev-parse --short=12 HEAD)"
  if ! git diff --quiet HEAD -- pyproject.toml src container; then
    tag="$tag-dirty"
  fi
fi

# OCI labels: the version from its one place (ffleet.__version__), the commit, the repository
version="$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' src/ffleet/__init__.py)"
if [ -z "$version" ]; then
  echo "build-and-push: no __version__ = \"...\" line in src/ffleet/__init__.py" >&2
  exit 1
fi
revision="$(git rev-parse HEAD)"
if ! git diff --quiet HEAD -- pyproject.toml src container; then
  revision="$revision-dirty"
fi
if [ -z "$source_url" ]; then
  # git@host:owner/repo.git -> https://host/owner/repo; a user:token@ in the URL is dropped
  source_url="$(git config --get remote.origin.url \
    | sed -e 's#^git@\([^:]*\):#https://\1/#' -e 's#//[^/@]*@#//#' -e 's#\.git$##' || true)"
fi

aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry" >&2

# A multi-platform build needs a builder with the docker-container driver.
builder=ffleet-builder
if ! docker buildx inspect "$builder" >/dev/null 2>&1; then
  docker buildx create --name "$builder" --driver docker-container >&2
fi

meta_dir="$(mktemp -d)"
trap 'rm -rf "$meta_dir"' EXIT

# build TARGET -> prints REPOSITORY@DIGEST: a digest, unlike a tag, always names the image that was built
# Also tags latest (cpu) and nvidia: the tags the stack's job definitions use when WorkerImageUri and
# GpuWorkerImageUri are empty.
build() {
  local target="$1" meta="$meta_dir/$1.json" moving
  if [ "$target" = cpu ]; then moving=latest; else moving=nvidia; fi
  docker buildx build --builder "$builder" --platform "$platforms" \
    --file container/Dockerfile --target "$target" \
    --build-arg "FFLEET_VERSION=$version" --build-arg "FFLEET_REVISION=$revision" \
    --build-arg "FFLEET_SOURCE=${source_url:-unknown}" \
    --tag "$repo:$tag-$target" --tag "$repo:$moving" --metadata-file "$meta" --push . >&2
  local digest
  digest="$(sed -n 's/.*"containerimage.digest": *"\(sha256:[0-9a-f]*\)".*/\1/p' "$meta" | head -n 1)"
  if [ -z "$digest" ]; then
    echo "build-and-push: buildx wrote no image digest to $meta" >&2
    exit 1
  fi
  echo "pushed $repo:$tag-$target and $repo:$moving ($platforms)" >&2
  echo "$repo@$digest"
}

cpu_uri="" gpu_uri=""
if [ "$only" != "nvidia" ]; then cpu_uri="$(build cpu)"; fi
if [ "$only" != "cpu" ]; then gpu_uri="$(build nvidia)"; fi

overrides=""
if [ -n "$cpu_uri" ]; then echo "WorkerImageUri=$cpu_uri"; overrides="WorkerImageUri=$cpu_uri"; fi
if [ -n "$gpu_uri" ]; then echo "GpuWorkerImageUri=$gpu_uri"; overrides="$overrides GpuWorkerImageUri=$gpu_uri"; fi
echo "# deploy with: sam deploy --parameter-overrides ${overrides# }" >&2
