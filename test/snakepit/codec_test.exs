defmodule Snakepit.CodecTest do
  # The term <-> MessagePack codec, straight through the NIF (no worker).
  use ExUnit.Case, async: true

  alias Snakepit.Native

  defp roundtrip(term), do: Native.codec_roundtrip(term)
  defp decode(bin), do: Native.decode_frame(bin, 0)

  test "scalars keep their value" do
    for v <- [nil, true, false, 0, -1, 127, 128, -33, 255, 65_536, 1.5, -0.25, 1.0e300] do
      assert roundtrip(v) == {:ok, v}, "for #{inspect(v)}"
    end
  end

  test "the whole int64 and uint64 range, and nothing beyond" do
    for v <- [-(2 ** 63), 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, -(2 ** 31), 2 ** 32] do
      assert roundtrip(v) == {:ok, v}
    end

    assert {:error, msg} = roundtrip(2 ** 64)
    assert msg =~ "outside the 64-bit range"
    assert {:error, _} = roundtrip(-(2 ** 63) - 1)
  end

  test "binaries: UTF-8 as str, others as bin, both back as binaries" do
    for v <- [
          "",
          "héllo ✓ 日本",
          <<255, 0, 1>>,
          :binary.copy(<<200>>, 10_000),
          String.duplicate("a", 70_000)
        ] do
      assert roundtrip(v) == {:ok, v}
    end
  end

  test "atoms other than nil/true/false become strings" do
    assert roundtrip(:hello) == {:ok, "hello"}
    assert roundtrip(%{key: :value}) == {:ok, %{"key" => "value"}}
  end

  test "lists and tuples become lists, nested containers survive" do
    assert roundtrip([]) == {:ok, []}
    assert roundtrip(%{}) == {:ok, %{}}
    assert roundtrip({1, "a", [2, {3}]}) == {:ok, [1, "a", [2, [3]]]}
    nested = %{"a" => [%{"b" => %{"c" => [1, 2, %{}]}}], 1 => [nil], "ü" => <<0>>}
    assert roundtrip(nested) == {:ok, nested}
    big = Map.new(1..1000, &{"k#{&1}", &1})
    assert roundtrip(big) == {:ok, big}
  end

  test "unsupported terms are refused with their path, never a crash" do
    assert {:error, "a pid at [\"a\"][1]"} = roundtrip(%{"a" => [1, self()]})
    assert {:error, "a reference at [:ref]"} = roundtrip(%{ref: make_ref()})
    assert {:error, "a function at [0]"} = roundtrip([fn -> :ok end])
    assert {:error, "a port at " <> _} = roundtrip(hd(Port.list()))
    assert {:error, "an improper list at " <> _} = roundtrip([1 | 2])
    assert {:error, "a bitstring that is not whole bytes at " <> _} = roundtrip(<<1::3>>)
  end

  test "deep nesting is refused instead of overflowing a stack" do
    deep = Enum.reduce(1..10_000, 0, fn _, acc -> [acc] end)
    assert {:error, msg} = roundtrip(deep)
    assert msg =~ "nested deeper than 256 levels"
    ok = Enum.reduce(1..200, 0, fn _, acc -> [acc] end)
    assert roundtrip(ok) == {:ok, ok}
  end

  test "non-finite floats decode to atoms" do
    nan = <<0xCB, 0x7F, 0xF8, 0::48>>
    inf = <<0xCB, 0x7F, 0xF0, 0::48>>
    ninf = <<0xCB, 0xFF, 0xF0, 0::48>>
    assert decode(nan) == {:ok, :nan}
    assert decode(inf) == {:ok, :infinity}
    assert decode(ninf) == {:ok, :neg_infinity}
    assert decode(<<0xCA, 1.5::float-32>>) == {:ok, 1.5}
  end

  test "ext values decode to a tagged tuple; malformed input is an error" do
    assert decode(<<0xD4, 5, 42>>) == {:ok, {:msgpack_ext, 5, <<42>>}}
    assert {:error, msg} = decode(<<0xC1>>)
    assert msg =~ "invalid MessagePack marker 0xc1"
    assert {:error, _} = decode(<<0xDB, 255, 255, 255, 255>>)
  end

  test "large maps, and duplicate keys (the last wins, as in Python)" do
    big = Map.new(1..5_000, &{"k#{&1}", &1})
    assert roundtrip(big) == {:ok, big}

    # 40 entries with the same key, then one more: more than 32 entries is
    # where enif_make_map_from_arrays would build a corrupt map.
    entries = IO.iodata_to_binary(for(i <- 1..40, do: <<0xA1, ?a, i>>)) <> <<0xA1, ?b, 0>>
    assert {:ok, map} = decode(<<0xDE, 41::16>> <> entries)
    assert map == %{"a" => 40, "b" => 0}
    assert map_size(map) == 2 and map["a"] == 40
  end

  test "decoding starts at the given offset and checks it" do
    assert Native.decode_frame(<<0xC0, 0xC3>>, 1) == {:ok, true}
    assert {:error, _} = Native.decode_frame(<<0xC0>>, 5)
  end

  test "map keys from a worker are never turned into atoms" do
    # {"brand_new_key_xyz": 1}
    key = "brand_new_key_#{System.unique_integer([:positive])}"
    bin = <<0x81, 0xA0 + byte_size(key)>> <> key <> <<1>>
    assert {:ok, %{^key => 1}} = decode(bin)
    assert_raise ArgumentError, fn -> String.to_existing_atom(key) end
  end
end
