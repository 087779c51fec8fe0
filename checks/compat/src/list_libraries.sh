# Run by the layer's bash inside startprefix: list every library of every ELF file of the layer
# with the layer's own loader ($1) and report each one resolved outside the layer (HOST), not
# found (MISSING), or a file the loader cannot list (FAIL).  Ends with "CHECKED <ELF files listed>".
loader=$1
n=0
while IFS= read -r -d '' f; do
    magic=
    IFS= read -r -N 4 magic < "$f" 2>/dev/null
    [ "$magic" = $'\x7fELF' ] || continue
    case ${f##*/} in ld-linux*.so.*|ld64.so.*|ld.so.*) continue ;; esac
    out=$("$loader" --list "$f" 2>&1 </dev/null)
    rc=$?
    case $out in *"statically linked"*|*"not a dynamic executable"*) continue ;; esac
    n=$((n + 1))
    if [ "$rc" -ne 0 ]; then
        echo "FAIL $f: exit $rc: ${out%%$'\n'*}"
        continue
    fi
    while IFS= read -r line; do
        line=${line#"${line%%[![:space:]]*}"}
        case $line in
            *"=> not found"*) echo "MISSING $f: $line" ;;
            *"=> $EPREFIX/"*|"$EPREFIX/"*) ;;
            *"=> "*|/*) echo "HOST $f: $line" ;;
        esac
    done <<< "$out"
done < <(find "$EPREFIX" -type f \( -perm /111 -o -name '*.so' -o -name '*.so.*' \) -print0)
echo "CHECKED $n"
