#!/usr/bin/env bash
# Creates an Azure Cache for Redis for distributed-leasing with the Azure CLI (if it does not exist
# yet), waits until it is provisioned, and writes appsettings.Local.json (mode 0600, git-ignored)
# so that the library and the demo use it. The .NET sample's "Option 1", for this library.
#
#   scripts/setup-resources.sh --project redis                      # access key (connection string)
#   scripts/setup-resources.sh --project redis --auth entra         # Microsoft Entra ID, no key stored
#   scripts/setup-resources.sh --project redis --name mycache --resource-group my-rg --location westeurope
#
# Options (defaults are the sample's):
#   --project redis            the resources to create (only "redis" exists)
#   --name NAME                cache name, globally unique in Azure      (myrediscache)
#   --resource-group GROUP     resource group, created if missing        (pranshu-rg)
#   --location LOCATION        Azure region                              (eastus)
#   --sku SKU                  Basic, Standard or Premium                (Basic)
#   --vm-size SIZE             C0..C6 (P1..P5 for Premium)              (C0)
#   --auth key|entra           key: write the access key into a connection string;
#                              entra: enable Microsoft Entra authentication on the cache, give
#                              the signed-in az user a data access policy, write only the
#                              Endpoint (the library signs in with the credential chain) (key)
#   --policy NAME              access policy for --auth entra             (Data Contributor)
#   --dir DIR                  where to write appsettings.Local.json     (current directory)
#   --key-prefix PREFIX        KeyPrefix                                 (lease:)
#   --database N               Database, 0-15                            (0)
#   --poll-interval SECONDS    between provisioning checks               (15)
#   --timeout SECONDS          give up waiting for provisioning after    (1800)
#
# Needs the Azure CLI, signed in (az login). The access key is never printed.
# Exit codes: 0 done, 1 failure (az, provisioning, timeout), 2 bad arguments.
set -euo pipefail

die() { printf 'setup-resources: %s\n' "$*" >&2; exit 1; }
usage_error() { printf 'setup-resources: %s (see --help)\n' "$*" >&2; exit 2; }
say() { printf '%s\n' "$*"; }

project="" name="myrediscache" group="pranshu-rg" location="eastus" sku="Basic" vm_size="C0"
auth="key" policy="Data Contributor" dir="." key_prefix="lease:" database=0
poll_interval=15 timeout=1800

need_value() { [[ $# -ge 2 && -n $2 ]] || usage_error "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --project) need_value "$@"; project=$2; shift 2 ;;
        --name) need_value "$@"; name=$2; shift 2 ;;
        --resource-group) need_value "$@"; group=$2; shift 2 ;;
        --location) need_value "$@"; location=$2; shift 2 ;;
        --sku) need_value "$@"; sku=$2; shift 2 ;;
        --vm-size) need_value "$@"; vm_size=$2; shift 2 ;;
        --auth) need_value "$@"; auth=$2; shift 2 ;;
        --policy) need_value "$@"; policy=$2; shift 2 ;;
        --dir) need_value "$@"; dir=$2; shift 2 ;;
        --key-prefix) need_value "$@"; key_prefix=$2; shift 2 ;;
        --database) need_value "$@"; database=$2; shift 2 ;;
        --poll-interval) need_value "$@"; poll_interval=$2; shift 2 ;;
        --timeout) need_value "$@"; timeout=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) usage_error "unknown argument: $1" ;;
    esac
done

[[ -n $project ]] || usage_error "--project is required (--project redis)"
[[ $project == redis ]] || usage_error "unknown project '$project': only --project redis exists here"
[[ $auth == key || $auth == entra ]] || usage_error "--auth must be key or entra"
[[ $name =~ ^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$ ]] \
    || usage_error "--name must be 1-63 letters, digits and '-', not starting or ending with '-'"
[[ $database =~ ^[0-9]{1,2}$ ]] && ((10#$database <= 15)) || usage_error "--database must be 0-15"
database=$((10#$database))
[[ $poll_interval =~ ^[0-9]+$ ]] || usage_error "--poll-interval must be whole seconds"
[[ $timeout =~ ^[0-9]+$ ]] || usage_error "--timeout must be whole seconds"
[[ -n $key_prefix ]] || usage_error "--key-prefix cannot be empty"
[[ -d $dir ]] || usage_error "--dir $dir is not a directory"

command -v az >/dev/null || die "the Azure CLI (az) is not installed: see https://aka.ms/installazurecli"
az account show -o none 2>/dev/null || die "the Azure CLI is not signed in: run az login, then run this again"

# JSON string literal (keys are base64 and names are plain, but never trust that blindly).
json_str() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

wait_provisioned() {
    local waited=0 state
    while :; do
        state=$(az redis show --name "$name" --resource-group "$group" \
            --query provisioningState -o tsv) || die "cannot read the state of cache $name"
        case $state in
            Succeeded) say "Cache $name is ready."; return 0 ;;
            Failed|Canceled|Deleting|Disabled)
                die "provisioning of cache $name ended in state '$state': see the Azure portal (resource group $group)" ;;
        esac
        if ((waited >= timeout)); then
            die "cache $name is still '$state' after ${timeout}s: run this again later (it resumes waiting)"
        fi
        say "Cache $name is '$state'; waiting (this takes 15-30 minutes for a new cache)..."
        sleep "$poll_interval"
        waited=$((waited + poll_interval))
        # A zero interval (tests) still counts as progress towards the timeout.
        ((poll_interval > 0)) || waited=$((waited + 1))
    done
}

# -- the cache --------------------------------------------------------------------------------

if az redis show --name "$name" --resource-group "$group" -o none 2>/dev/null; then
    say "Cache $name exists in resource group $group."
else
    if [[ $(az group exists --name "$group") != true ]]; then
        say "Creating resource group $group in $location..."
        az group create --name "$group" --location "$location" -o none
    fi
    say "Creating Azure Cache for Redis $name ($sku $vm_size, $location)..."
    create=(az redis create --name "$name" --resource-group "$group" --location "$location"
        --sku "$sku" --vm-size "$vm_size")
    if [[ $auth == entra ]]; then
        create+=(--redis-configuration '{"aad-enabled":"true"}')
    fi
    "${create[@]}" -o none
fi
wait_provisioned

host=$(az redis show --name "$name" --resource-group "$group" --query hostName -o tsv)
port=$(az redis show --name "$name" --resource-group "$group" --query sslPort -o tsv)
[[ -n $host ]] || die "the cache $name has no host name yet"
[[ $port =~ ^[0-9]+$ ]] || port=6380
endpoint="$host:$port"

# -- access -----------------------------------------------------------------------------------

if [[ $auth == key ]]; then
    key=$(az redis list-keys --name "$name" --resource-group "$group" --query primaryKey -o tsv)
    [[ -n $key ]] || die "az redis list-keys gave no key for $name"
    target="\"ConnectionString\": $(json_str "$endpoint,password=$key,ssl=True")"
    unset key
else
    aad=$(az redis show --name "$name" --resource-group "$group" \
        --query 'redisConfiguration."aad-enabled"' -o tsv 2>/dev/null || true)
    if [[ $aad != true ]]; then
        say "Enabling Microsoft Entra authentication on $name..."
        az redis update --name "$name" --resource-group "$group" \
            --set 'redisConfiguration.aad-enabled=true' -o none
        wait_provisioned
    fi
    oid=$(az ad signed-in-user show --query id -o tsv) \
        || die "cannot read the signed-in user's object id (az ad signed-in-user show); a service principal login needs its access policy set by hand"
    upn=$(az ad signed-in-user show --query userPrincipalName -o tsv 2>/dev/null || echo "$oid")
    assignment="dl-${oid:0:8}"
    say "Giving $upn (object id $oid) the '$policy' access policy on $name..."
    az redis access-policy-assignment create --name "$name" --resource-group "$group" \
        --access-policy-assignment-name "$assignment" --policy-name "$policy" \
        --object-id "$oid" --object-id-alias "$upn" -o none
    target="\"Endpoint\": $(json_str "$endpoint")"
fi

# -- appsettings.Local.json -------------------------------------------------------------------

local_file="$dir/appsettings.Local.json"
tmp=$(mktemp "$dir/.appsettings.Local.json.XXXXXX")   # created 0600 by mktemp
trap 'rm -f "$tmp"' EXIT
printf '{\n  "RedisLeasing": {\n    %s,\n    "KeyPrefix": %s,\n    "Database": %s\n  }\n}\n' \
    "$target" "$(json_str "$key_prefix")" "$database" >"$tmp"
unset target
mv -f "$tmp" "$local_file"
trap - EXIT

ignore="$dir/.gitignore"
if ! { [[ -f $ignore ]] && grep -qxE '/?appsettings\.Local\.json' "$ignore"; }; then
    if [[ -s $ignore && -n $(tail -c1 "$ignore") ]]; then printf '\n' >>"$ignore"; fi
    printf 'appsettings.Local.json\n' >>"$ignore"
fi

say "Wrote $local_file (mode 0600, listed in $ignore)."
if [[ $auth == entra ]]; then
    say "Microsoft Entra ID: the library signs in as your Azure CLI login here; give the managed"
    say "identity of each deployed app its own access policy:"
    say "  az redis access-policy-assignment create --name $name --resource-group $group \\"
    say "    --access-policy-assignment-name APP --policy-name \"$policy\" --object-id APP_OBJECT_ID --object-id-alias APP"
fi
say "Try it: python examples/compete.py --instance us-east-1 --region us-east"
