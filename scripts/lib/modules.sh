# Copies kernel modules and their dependencies into an initramfs tree.
#   copy_modules RELEASE ROOT MODULE...
# Writes the .ko files to ROOT/modules/ and their load order (dependencies
# first, each once) to ROOT/modules/order.
copy_modules() {
  local release=$1 root=$2; shift 2
  mkdir -p "$root/modules"
  : > "$root/modules/order"
  local module line path name
  local deps
  for module in "$@"; do
    if ! deps=$(modprobe -S "$release" --show-depends "$module" 2>&1); then
      echo "copy_modules: no module $module for kernel $release: $deps" >&2
      return 1
    fi
    while read -r line; do
      [[ $line == insmod\ * ]] || continue
      path=${line#insmod }
      path=${path%% *}
      name=$(basename "$path")
      grep -qx "$name" "$root/modules/order" && continue
      cp "$path" "$root/modules/$name"
      echo "$name" >> "$root/modules/order"
    done <<<"$deps"
  done
}
