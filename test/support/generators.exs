defmodule Snakepit.Generators do
  @moduledoc false
  # PropEr generators (Erlang's `:proper_types`, from the Debian package
  # erlang-proper) for the terms that cross Snakepit's pipe, and the models
  # the properties in test/snakepit/properties_test.exs check against (loaded
  # by that file: see there why it is not an .ex):
  #
  #   * `image/1`: what a sendable term comes back as after a round trip
  #     (the "What crosses the pipe" table in Snakepit's moduledoc);
  #   * `py_key/1`: a map key as Python compares it, so generated maps have
  #     no two keys that Python would take for one;
  #   * `key_text/1`, `float_text/1`: a map key as the codec names it in an
  #     error's path (native/snakepit_nif/src/codec/keys.rs, `key_text`:
  #     Rust's `{:?}` for strings and floats).
  #
  # PropEr's ?LET, ?SUCHTHAT, ?LAZY and ?SIZED macros are not available in
  # Elixir: they are `:proper_types.bind/3`, `add_constraint/3`, `lazy/1` and
  # `sized/1`. A tuple or list of generators is a generator of tuples or
  # lists (PropEr "raw types").

  alias :proper_types, as: T

  @i64_min 0 - 2 ** 63
  @i64_max 2 ** 63 - 1
  @u64_max 2 ** 64 - 1

  ## Sendable terms

  @doc """
  Any sendable term: scalars nested in lists, tuples and maps, and now
  and then a big binary.
  """
  def term do
    T.frequency([
      {14, T.sized(&term/1)},
      {1, big_binary()},
      {1, T.fixed_list([T.sized(&term/1), big_binary()])}
    ])
  end

  @doc "A term of a few scalars, without big binaries."
  def small_term, do: T.resize(4, T.sized(&term/1))

  # About `size` scalars in all: a container shares its size among its
  # items (and keys).
  defp term(size) when size <= 1, do: scalar()

  defp term(size) do
    T.frequency(
      [
        {4, scalar()},
        {3, items(size, &term/1)},
        {3, T.bind(items(size, &term/1), &List.to_tuple/1, false)},
        {3, T.bind(items(size, &{key(&1), term(&1)}), &python_map/1, false)}
      ] ++ wide_map(size)
    )
  end

  # Maps of more than 32 keys (the VM stores them differently), for terms
  # not meant to be small.
  defp wide_map(size) when size < 16, do: []

  defp wide_map(size),
    do: [{1, T.bind(T.vector(33 + div(size, 4), {scalar_key(), scalar()}), &python_map/1, false)}]

  # A list of `item.(size)`s whose sizes add up to about `size`: mostly
  # a few, now and then up to `size`.
  defp items(size, item) do
    width = T.frequency([{3, T.integer(0, min(size, 4))}, {1, T.integer(0, size)}])
    T.bind(width, fn n -> T.vector(n, item.(div(size, n + 1))) end, false)
  end

  @doc "A sendable term that is not a container (nor a big binary)."
  def scalar do
    cached(:scalar, fn ->
      T.frequency([
        {2, T.elements([nil, true, false])},
        {4, integer()},
        {4, float()},
        {4, text()},
        {3, T.binary()},
        {2, atom()}
      ])
    end)
  end

  @doc "Integers of the signed and unsigned 64-bit range, edges included."
  def integer do
    cached(:integer, fn ->
      T.frequency([
        {3, T.integer()},
        {2, T.bind({T.binary(8), T.boolean()}, &int64/1, false)},
        {1, T.integer(-(2 ** 40), 2 ** 40)},
        {2, T.elements(int_edges())}
      ])
    end)
  end

  # Any int64 or uint64, uniformly (PropEr's integer/2 favours small ones).
  defp int64({<<n::signed-64>>, true}), do: n
  defp int64({<<n::64>>, false}), do: n

  defp int_edges do
    edges = [0, 7, 8, 15, 16, 31, 32, 63, 127, 255, 32_767, 65_535, 2 ** 31 - 1, 2 ** 32 - 1]
    edges = edges ++ [2 ** 63 - 1]
    Enum.flat_map(edges, &[&1, &1 + 1, -&1, -&1 - 1]) ++ [@u64_max, @u64_max - 1]
  end

  @doc """
  Finite floats: small ones, any bit pattern but NaN and ±inf (which
  Elixir cannot hold), -0.0 and subnormals included, and powers of two
  (whose decimal digits end in 5: ties when rounded).
  """
  def float do
    cached(:float, fn ->
      T.frequency([
        {2, T.float()},
        {2, bits_float()},
        {1, T.bind(T.integer(-1074, 1023), &(:math.pow(2, &1) * 1.0), false)},
        {1, T.elements(float_edges())}
      ])
    end)
  end

  defp bits_float do
    T.bind(
      {T.integer(0, 1), T.integer(0, 2046), T.integer(0, 2 ** 52 - 1)},
      fn {sign, exponent, mantissa} -> bits_to_float(sign, exponent, mantissa) end,
      false
    )
  end

  defp bits_to_float(sign, exponent, mantissa) do
    <<f::float>> = <<sign::1, exponent::11, mantissa::52>>
    f
  end

  defp float_edges do
    [
      0.0,
      bits_to_float(1, 0, 0),
      bits_to_float(0, 0, 1),
      bits_to_float(1, 2046, 2 ** 52 - 1),
      1.0,
      -1.5,
      0.1,
      1.0e-4,
      9.999999999999999e-5,
      1.0e16,
      9.999999999999998e15,
      2.0 ** 53,
      2.0 ** 63,
      2.0 ** 64
    ]
  end

  @doc "UTF-8 binaries (any code point), now and then longer than 64 characters."
  def text do
    cached(:text, fn ->
      T.frequency([
        {4, :proper_unicode.utf8()},
        {1, T.resize(80, :proper_unicode.utf8())}
      ])
    end)
  end

  @doc """
  Binaries of 4 KiB to 70 KiB: the codec returns strings and binaries of
  4 KiB or more as sub-binaries of the frame.
  """
  def big_binary do
    cached(:big_binary, fn ->
      T.bind(
        {T.integer(4096, 70_000), T.non_empty(T.binary())},
        fn {size, chunk} ->
          binary_part(:binary.copy(chunk, div(size, byte_size(chunk)) + 1), 0, size)
        end,
        false
      )
    end)
  end

  @doc """
  Atoms whose names are Latin-1 (code points up to 255). Atoms beyond that
  make the NIF panic: see `unicode_atom/0`.
  """
  def atom do
    cached(:atom, fn ->
      T.bind(T.list(T.integer(0, 255)), &List.to_atom(Enum.take(&1, 255)), false)
    end)
  end

  @doc "Atoms whose names have a code point above 255 (a known bug)."
  def unicode_atom do
    T.bind(
      {:proper_unicode.utf8(), T.integer(256, 0x10FFFF), :proper_unicode.utf8()},
      fn {a, c, b} -> String.to_atom(cut(a <> safe_char(c) <> b, 255)) end,
      false
    )
  end

  # Surrogates are not characters: moves them out of the way.
  defp safe_char(c) when c in 0xD800..0xDFFF, do: <<c + 0x800::utf8>>
  defp safe_char(c), do: <<c::utf8>>

  @doc """
  Maps from `key_gen` to `value_gen`, with no two keys that Python would
  take for one (the first of those is kept).
  """
  def map_of(key_gen, value_gen) do
    T.bind(T.list({key_gen, value_gen}), &python_map/1, false)
  end

  defp python_map(pairs), do: pairs |> Enum.uniq_by(fn {k, _} -> py_key(k) end) |> Map.new()

  @doc """
  Map keys Python can hash: scalars, and lists or tuples of those (Python
  receives them as tuples). Not maps: Python cannot hash a dict.
  """
  def key, do: T.sized(&key/1)

  defp key(size) when size <= 1, do: scalar_key()

  defp key(size) do
    T.frequency([
      {8, scalar_key()},
      {1, items(size, &key/1)},
      {1, T.bind(items(size, &key/1), &List.to_tuple/1, false)}
    ])
  end

  defp scalar_key do
    cached(:scalar_key, fn ->
      T.frequency([
        {1, T.elements([nil, true, false])},
        {3, integer()},
        {2, float()},
        {4, text()},
        {2, T.binary()},
        {3, atom()}
      ])
    end)
  end

  ## Refusals

  @doc """
  A term with no MessagePack form, and what the codec calls it. The codec
  refuses it where it stands, whatever it holds (an improper list's items
  are not looked at).
  """
  def unsendable do
    T.oneof([
      T.exactly({self(), "a pid"}),
      T.exactly({spawn(fn -> :ok end), "a pid"}),
      T.exactly({make_ref(), "a reference"}),
      T.exactly({fn -> :ok end, "a function"}),
      T.exactly({&Enum.map/2, "a function"}),
      T.exactly({hd(Port.list()), "a port"}),
      T.bind(
        T.oneof([
          T.integer(@u64_max + 1, 2 ** 200),
          T.integer(-(2 ** 200), @i64_min - 1),
          T.elements([@u64_max + 1, @i64_min - 1])
        ]),
        &{&1, "an integer outside the 64-bit range"},
        false
      ),
      T.bind(
        {T.non_empty(T.list(scalar())), scalar()},
        fn {items, tail} -> {improper(items, tail), "an improper list"} end,
        false
      ),
      T.bind(
        {T.binary(), T.integer(1, 7)},
        fn {b, bits} -> {<<b::binary, 0::size(bits)>>, "a bitstring that is not whole bytes"} end,
        false
      )
    ])
  end

  # [x1, ..., xn | tail] with tail not a list.
  defp improper(items, tail) when is_list(tail), do: improper(items, {tail})
  defp improper(items, tail), do: List.foldr(items, tail, &[&1 | &2])

  @doc """
  Where to put a term, from the outside in: a list of steps, each one a
  container around the next (a list or tuple item, a map's value, or a
  map's key), with sendable terms beside it.
  """
  def path, do: T.resize(6, T.list(step()))

  defp step do
    cached(:step, fn ->
      small = small_term()

      T.oneof([
        {:item, T.elements([:list, :tuple]), T.resize(4, T.list(small)),
         T.resize(4, T.list(small))},
        {:value, path_key(), T.resize(4, T.list({key(), small}))},
        {:key, small, T.resize(4, T.list({key(), small}))}
      ])
    end)
  end

  @doc """
  Keys the codec names by their value in a path (and some it calls
  `<key>`). Strings are of Latin-1 and a few other characters: Rust's
  `{:?}` escapes the ones it considers unprintable, by Unicode tables not
  copied here.
  """
  def path_key do
    cached(:path_key, fn ->
      # An index into the characters rather than the characters themselves,
      # so that shrinking cannot step outside them.
      alphabet = List.to_tuple(Enum.to_list(0..255) ++ ~c"ЖλΩ日本✓🐍")
      chars = T.bind(T.integer(0, tuple_size(alphabet) - 1), &elem(alphabet, &1), false)

      T.frequency([
        {4, T.bind(T.list(chars), &List.to_string/1, false)},
        {1, T.bind(T.resize(80, T.list(chars)), &List.to_string/1, false)},
        {2, atom()},
        {1, T.elements([nil, true, false])},
        {2, integer()},
        {2, float()},
        {1, T.bind(T.binary(), &(<<0xFF>> <> &1), false)},
        {1, T.resize(3, T.list(scalar_key()))}
      ])
    end)
  end

  @doc """
  Puts `inner` at `path` (from `path/0`); returns the term and the path as
  the codec writes it (`[2]["a"][<key>]`).
  """
  def place(inner, path) do
    path
    |> Enum.reverse()
    |> Enum.reduce({inner, []}, fn step, {term, segments} ->
      {wrapped, segment} = wrap(step, term)
      {wrapped, [segment | segments]}
    end)
    |> then(fn {term, segments} -> {term, Enum.join(segments)} end)
  end

  defp wrap({:item, kind, before, rest}, term) do
    items = before ++ [term | rest]
    container = if kind == :tuple, do: List.to_tuple(items), else: items
    {container, "[#{length(before)}]"}
  end

  defp wrap({:value, key, siblings}, term),
    do: {siblings |> without_key(key) |> Map.put(key, term), "[#{key_text(key)}]"}

  defp wrap({:key, value, siblings}, term),
    do: {siblings |> without_key(term) |> Map.put(term, value), "[<key>]"}

  # Sibling entries, none a key Python would take for `key` (nor for each
  # other), so the only failure in the map is the one placed there.
  defp without_key(pairs, key) do
    pairs
    |> Enum.reject(fn {k, _} -> same_key?(k, key) end)
    |> Enum.uniq_by(fn {k, _} -> py_key(k) end)
    |> Map.new()
  end

  defp same_key?(a, b) do
    a === b or py_key(a) == py_key(b)
  rescue
    # `b` holds an unsendable term: no sendable key is equal to it.
    _ -> false
  end

  @doc """
  Two keys that are distinct in Elixir and one key in Python, and whether
  the codec can tell by their encoding alone (`:scalar`) or would have to
  compare inside containers (`:container`).
  """
  def colliding_keys(kind \\ :scalar)

  def colliding_keys(:scalar) do
    T.oneof([
      T.bind(atom(), &{&1, Atom.to_string(&1)}, false)
      |> T.add_constraint(fn {a, _} -> a not in [nil, true, false] end, true),
      T.bind(T.integer(-(2 ** 53), 2 ** 53), &{&1, &1 * 1.0}, false),
      T.elements([
        {2 ** 63, 2.0 ** 63},
        {-(2 ** 63), -(2.0 ** 63)},
        {true, 1},
        {true, 1.0},
        {false, 0},
        {false, 0.0},
        {false, bits_to_float(1, 0, 0)}
      ])
    ])
  end

  def colliding_keys(:container) do
    T.bind(
      {colliding_keys(:scalar), T.elements([:list, :tuple]), T.elements([:list, :tuple])},
      fn {{a, b}, outer_a, outer_b} -> {container(outer_a, [a]), container(outer_b, [b])} end,
      false
    )
  end

  defp container(:list, items), do: items
  defp container(:tuple, items), do: List.to_tuple(items)

  # Generators are built once per process: PropEr spends most of its time
  # building types, and these are built again for every node of a term.
  defp cached(name, build) do
    case Process.get({__MODULE__, name}) do
      nil ->
        gen = build.()
        Process.put({__MODULE__, name}, gen)
        gen

      gen ->
        gen
    end
  end

  ## Models

  @doc "What a sendable term comes back as after a round trip."
  def image(t) when t in [nil, true, false], do: t
  def image(t) when is_atom(t), do: Atom.to_string(t)
  def image(t) when is_list(t), do: Enum.map(t, &image/1)
  def image(t) when is_tuple(t), do: t |> Tuple.to_list() |> image()
  def image(t) when is_map(t), do: Map.new(t, fn {k, v} -> {image(k), image(v)} end)
  def image(t), do: t

  @doc """
  Strict equality: `1` is not `1.0`, and (unlike `===` before OTP 27)
  `-0.0` is not `0.0`.
  """
  def same?(a, b) when is_float(a) and is_float(b), do: <<a::float>> == <<b::float>>
  def same?(a, b) when is_list(a) and is_list(b), do: same_items?(a, b)

  def same?(a, b) when is_map(a) and is_map(b) and map_size(a) == map_size(b) do
    sort = fn m -> Enum.sort_by(m, fn {k, _} -> :erlang.term_to_binary(k) end) end

    Enum.zip(sort.(a), sort.(b))
    |> Enum.all?(fn {{k1, v1}, {k2, v2}} -> same?(k1, k2) and same?(v1, v2) end)
  end

  def same?(a, b) when is_map(a) and is_map(b), do: false
  def same?(a, b), do: a === b

  defp same_items?([], []), do: true
  defp same_items?([a | as], [b | bs]), do: same?(a, b) and same_items?(as, bs)
  defp same_items?(_, _), do: false

  @doc """
  A map key as Python compares it: `1 == 1.0 == True`, `:x` and `"x"` are
  both the str "x", other binaries are bytes, lists and tuples are tuples
  compared item by item.
  """
  def py_key(nil), do: :none
  def py_key(true), do: {:num, 1}
  def py_key(false), do: {:num, 0}
  def py_key(k) when is_atom(k), do: {:str, Atom.to_string(k)}
  def py_key(k) when is_integer(k), do: {:num, k}
  def py_key(k) when is_float(k) and k == trunc(k), do: {:num, trunc(k)}
  def py_key(k) when is_float(k), do: {:float, k}

  def py_key(k) when is_binary(k),
    do: if(String.valid?(k), do: {:str, k}, else: {:bytes, k})

  def py_key(k) when is_list(k), do: {:tuple, Enum.map(k, &py_key/1)}
  def py_key(k) when is_tuple(k), do: k |> Tuple.to_list() |> py_key()

  @doc "A map key as the codec names it in a path or message (`key_text` in codec/keys.rs)."
  def key_text(k) when k in [nil, true, false], do: Atom.to_string(k)
  def key_text(k) when is_atom(k), do: ":" <> Atom.to_string(k)
  def key_text(k) when is_integer(k) and k >= @i64_min and k <= @i64_max, do: Integer.to_string(k)
  def key_text(k) when is_float(k), do: float_text(k)

  def key_text(k) when is_binary(k) do
    cond do
      not String.valid?(k) -> "<key>"
      # Cut after 64 code points (not graphemes: "\r\n" is two).
      length(String.codepoints(k)) > 64 -> rust_debug_str(cut(k, 64)) <> "..."
      true -> rust_debug_str(k)
    end
  end

  # Anything else, integers above the int64 range included (codec/keys.rs reads
  # a key as a str, an atom, an i64 or an f64).
  def key_text(_), do: "<key>"

  defp cut(s, n), do: s |> String.codepoints() |> Enum.take(n) |> Enum.join()

  # Rust's `{:?}` of a str: exact for Latin-1 (U+0000..U+00FF) and the
  # other characters path_key/0 uses (Rust prints them as they are).
  defp rust_debug_str(s), do: "\"" <> for(<<c::utf8 <- s>>, into: "", do: escape(c)) <> "\""

  @escapes %{?\0 => "\\0", ?\t => "\\t", ?\r => "\\r", ?\n => "\\n", ?\\ => "\\\\", ?" => "\\\""}

  defp escape(c) when is_map_key(@escapes, c), do: @escapes[c]

  # What Rust deems unprintable in Latin-1: C0 and C1 controls, DEL, NBSP
  # and the soft hyphen.
  defp escape(c) when c < 0x20 or c in 0x7F..0xA0 or c == 0xAD,
    do: "\\u{" <> String.downcase(Integer.to_string(c, 16)) <> "}"

  defp escape(c), do: <<c::utf8>>

  @doc """
  Rust's `{:?}` of an f64: the shortest digits that read back as the same
  float, in decimal with at least one fractional digit when
  1e-4 <= |f| < 1e16 (or f is zero), else as `1.5e-7` / `1e16`.
  """
  def float_text(f) do
    sign = if <<f::float>> >= <<0x80, 0::56>>, do: "-", else: ""
    {digits, point} = shortest_digits(abs(f))
    n = String.length(digits)
    a = abs(f)

    body =
      cond do
        a != 0.0 and (a < 1.0e-4 or a >= 1.0e16) ->
          {first, rest} = String.split_at(digits, 1)
          mantissa = if rest == "", do: first, else: first <> "." <> rest
          "#{mantissa}e#{point - 1}"

        point <= 0 ->
          "0." <> String.duplicate("0", -point) <> digits

        point >= n ->
          digits <> String.duplicate("0", point - n) <> ".0"

        true ->
          {int, frac} = String.split_at(digits, point)
          int <> "." <> frac
      end

    sign <> body
  end

  # The shortest digits that read back as a float >= 0, and where the
  # decimal point goes: f = 0.DIGITS * 10^point; 0.0 is {"0", 1}. Erlang's
  # shortest form (Ryu) has them, but for a tie (the exact value halfway
  # between two candidates) which Ryu rounds to even and Rust rounds up:
  # 2^-25 = 2.98023223876953125e-8 is 2.9802322387695313e-8 in Rust,
  # 2.9802322387695312e-8 in Erlang.
  defp shortest_digits(f) when f == 0.0, do: {"0", 1}

  defp shortest_digits(f) do
    {digits, point} = erlang_digits(f)
    {exact, _} = exact_digits(f)
    {kept, rest} = String.split_at(exact, String.length(digits))

    if kept == digits and rest =~ ~r/^50*$/ do
      up = Integer.to_string(String.to_integer(digits) + 1)
      {String.trim_trailing(up, "0"), point + String.length(up) - String.length(digits)}
    else
      {digits, point}
    end
  end

  defp erlang_digits(f) do
    {mantissa, exponent} =
      case String.split(:erlang.float_to_binary(f, [:short]), "e") do
        [m, e] -> {m, String.to_integer(e)}
        [m] -> {m, 0}
      end

    [int, frac] = String.split(mantissa, ".")
    all = int <> frac
    trimmed = String.trim_leading(all, "0")
    point = String.length(int) + exponent - (String.length(all) - String.length(trimmed))
    {String.trim_trailing(trimmed, "0"), point}
  end

  # All the digits of f > 0 (a float is m * 2^e: its decimal expansion is
  # finite), and where the point goes.
  defp exact_digits(f) do
    {m, e} =
      case <<f::float>> do
        <<_::1, 0::11, frac::52>> -> {frac, -1074}
        <<_::1, exp::11, frac::52>> -> {frac + 2 ** 52, exp - 1075}
      end

    if e >= 0 do
      digits = Integer.to_string(m * 2 ** e)
      {digits, String.length(digits)}
    else
      # m * 2^e = m * 5^-e / 10^-e
      digits = Integer.to_string(m * 5 ** -e)
      {digits, String.length(digits) + e}
    end
  end
end
