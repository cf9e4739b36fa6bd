defmodule Bench.Msgpack do
  @moduledoc false
  # A small pure-Elixir MessagePack codec, for the hand-written Port baseline
  # in bench/roundtrip.exs (no msgpack package can be fetched here).

  def encode(nil), do: <<0xC0>>
  def encode(false), do: <<0xC2>>
  def encode(true), do: <<0xC3>>
  def encode(i) when is_integer(i) and i >= 0 and i < 128, do: <<i>>
  def encode(i) when is_integer(i) and i < 0 and i >= -32, do: <<i::signed-8>>
  def encode(i) when is_integer(i) and i > 0x7FFF_FFFF_FFFF_FFFF, do: <<0xCF, i::64>>
  def encode(i) when is_integer(i), do: <<0xD3, i::signed-64>>
  def encode(f) when is_float(f), do: <<0xCB, f::float-64>>
  def encode(a) when is_atom(a), do: encode(Atom.to_string(a))

  def encode(b) when is_binary(b) do
    if String.valid?(b), do: [str_header(byte_size(b)), b], else: [bin_header(byte_size(b)), b]
  end

  def encode(l) when is_list(l), do: [array_header(length(l)) | Enum.map(l, &encode/1)]

  def encode(m) when is_map(m),
    do: [map_header(map_size(m)) | Enum.map(m, fn {k, v} -> [encode(k), encode(v)] end)]

  defp str_header(n) when n < 32, do: <<0xA0 + n>>
  defp str_header(n) when n < 256, do: <<0xD9, n>>
  defp str_header(n) when n < 65_536, do: <<0xDA, n::16>>
  defp str_header(n), do: <<0xDB, n::32>>
  defp bin_header(n) when n < 256, do: <<0xC4, n>>
  defp bin_header(n) when n < 65_536, do: <<0xC5, n::16>>
  defp bin_header(n), do: <<0xC6, n::32>>
  defp array_header(n) when n < 16, do: <<0x90 + n>>
  defp array_header(n) when n < 65_536, do: <<0xDC, n::16>>
  defp array_header(n), do: <<0xDD, n::32>>
  defp map_header(n) when n < 16, do: <<0x80 + n>>
  defp map_header(n) when n < 65_536, do: <<0xDE, n::16>>
  defp map_header(n), do: <<0xDF, n::32>>

  def decode(bin) do
    {value, <<>>} = dec(bin)
    value
  end

  defp dec(<<i, rest::binary>>) when i < 0x80, do: {i, rest}
  defp dec(<<m, rest::binary>>) when m in 0x80..0x8F, do: dec_map(m - 0x80, rest, %{})
  defp dec(<<m, rest::binary>>) when m in 0x90..0x9F, do: dec_array(m - 0x90, rest, [])
  defp dec(<<m, rest::binary>>) when m in 0xA0..0xBF, do: take(m - 0xA0, rest)
  defp dec(<<0xC0, rest::binary>>), do: {nil, rest}
  defp dec(<<0xC2, rest::binary>>), do: {false, rest}
  defp dec(<<0xC3, rest::binary>>), do: {true, rest}
  defp dec(<<0xC4, n, rest::binary>>), do: take(n, rest)
  defp dec(<<0xC5, n::16, rest::binary>>), do: take(n, rest)
  defp dec(<<0xC6, n::32, rest::binary>>), do: take(n, rest)
  defp dec(<<0xCB, f::float-64, rest::binary>>), do: {f, rest}
  defp dec(<<0xCC, i, rest::binary>>), do: {i, rest}
  defp dec(<<0xCD, i::16, rest::binary>>), do: {i, rest}
  defp dec(<<0xCE, i::32, rest::binary>>), do: {i, rest}
  defp dec(<<0xCF, i::64, rest::binary>>), do: {i, rest}
  defp dec(<<0xD0, i::signed-8, rest::binary>>), do: {i, rest}
  defp dec(<<0xD1, i::signed-16, rest::binary>>), do: {i, rest}
  defp dec(<<0xD2, i::signed-32, rest::binary>>), do: {i, rest}
  defp dec(<<0xD3, i::signed-64, rest::binary>>), do: {i, rest}
  defp dec(<<0xD9, n, rest::binary>>), do: take(n, rest)
  defp dec(<<0xDA, n::16, rest::binary>>), do: take(n, rest)
  defp dec(<<0xDB, n::32, rest::binary>>), do: take(n, rest)
  defp dec(<<0xDC, n::16, rest::binary>>), do: dec_array(n, rest, [])
  defp dec(<<0xDD, n::32, rest::binary>>), do: dec_array(n, rest, [])
  defp dec(<<0xDE, n::16, rest::binary>>), do: dec_map(n, rest, %{})
  defp dec(<<0xDF, n::32, rest::binary>>), do: dec_map(n, rest, %{})
  defp dec(<<i::signed-8, rest::binary>>) when i < 0, do: {i, rest}

  defp take(n, bin), do: {binary_part(bin, 0, n), binary_part(bin, n, byte_size(bin) - n)}

  defp dec_array(0, rest, acc), do: {Enum.reverse(acc), rest}

  defp dec_array(n, bin, acc) do
    {v, rest} = dec(bin)
    dec_array(n - 1, rest, [v | acc])
  end

  defp dec_map(0, rest, acc), do: {acc, rest}

  defp dec_map(n, bin, acc) do
    {k, rest} = dec(bin)
    {v, rest} = dec(rest)
    dec_map(n - 1, rest, Map.put(acc, k, v))
  end
end
