defmodule Snakepit.TensorTest do
  # Tensors (numpy arrays <-> %Snakepit.Tensor{}) through real workers.
  use ExUnit.Case, async: true

  alias Snakepit.{Error, Native, TestPools, Tensor}

  doctest Snakepit.Tensor

  setup_all do
    %{pool: TestPools.start_pool(size: 2)}
  end

  defp exec(ctx, tool, args \\ %{}), do: Snakepit.execute(tool, args, pool: ctx.pool)

  # numpy's name for each dtype.
  @dtypes [
    {{:f, 16}, "float16"},
    {{:f, 32}, "float32"},
    {{:f, 64}, "float64"},
    {{:s, 8}, "int8"},
    {{:s, 16}, "int16"},
    {{:s, 32}, "int32"},
    {{:s, 64}, "int64"},
    {{:u, 8}, "uint8"},
    {{:u, 16}, "uint16"},
    {{:u, 32}, "uint32"},
    {{:u, 64}, "uint64"},
    {{:c, 64}, "complex64"},
    {{:c, 128}, "complex128"},
    {{:bool, 8}, "bool"}
  ]

  @shapes [{}, {0}, {0, 3}, {2, 3, 4}]

  # What make_tensor builds: arange(n) in the dtype (bool: n % 2 == 1), C order.
  defp arange({kind, bits}, shape) do
    n = Tensor.nbytes({:u, 8}, shape)
    for i <- 0..(n - 1)//1, into: <<>>, do: element({kind, bits}, i)
  end

  defp element({:f, bits}, i), do: <<i * 1.0::float-little-size(bits)>>
  defp element({:s, bits}, i), do: <<i::signed-little-size(bits)>>
  defp element({:u, bits}, i), do: <<i::unsigned-little-size(bits)>>

  defp element({:c, bits}, i),
    do: <<i * 1.0::float-little-size(div(bits, 2)), 0.0::float-little-size(div(bits, 2))>>

  defp element({:bool, 8}, i), do: <<rem(i, 2)>>

  defp expected_sum(dtype, shape) do
    n = Tensor.nbytes({:u, 8}, shape)

    case dtype do
      {:bool, 8} -> div(n, 2)
      {:f, _} -> div(n * (n - 1), 2) * 1.0
      {:c, _} -> [div(n * (n - 1), 2) * 1.0, 0.0]
      _ -> div(n * (n - 1), 2)
    end
  end

  describe "Python to Elixir and back" do
    test "every dtype and shape round-trips", ctx do
      for {dtype, name} <- @dtypes, shape <- @shapes do
        where = "#{name} #{inspect(shape)}"

        assert {:ok, %Tensor{} = t} =
                 exec(ctx, "make_tensor", %{dtype: name, shape: Tuple.to_list(shape)})

        assert t.dtype == dtype, where
        assert t.shape == shape, where
        assert t.data == arange(dtype, shape), where

        # Back to Python: the same array arrives, and comes back unchanged.
        assert {:ok, ^t} = exec(ctx, "tensor_echo", %{t: t})
        assert {:ok, info} = exec(ctx, "tensor_info", %{t: t})
        assert info["type"] == "ndarray"
        assert info["dtype"] == name, where
        assert info["shape"] == Tuple.to_list(shape), where
        assert info["c_contiguous"] and info["aligned"], where
        refute info["writeable"], "arrays that arrive are read-only views"
        assert info["sum"] == expected_sum(dtype, shape), where
      end
    end

    test "strided views arrive in C order", ctx do
      assert {:ok, t} = exec(ctx, "strided")
      assert t.dtype == {:s, 32} and t.shape == {3, 4}
      # arange(24).reshape(4, 6)[:, ::2].T
      expected = for j <- [0, 2, 4], i <- 0..3, into: <<>>, do: <<i * 6 + j::signed-little-32>>
      assert t.data == expected
    end

    test "big-endian arrays arrive little-endian", ctx do
      assert {:ok, t} = exec(ctx, "big_endian")
      assert t.dtype == {:f, 64} and t.shape == {3}
      assert t.data == <<1.5::float-little-64, -2.0::float-little-64, 3.25::float-little-64>>
    end

    test "lists stay lists, numpy scalars are numbers, 0-d arrays are tensors", ctx do
      assert {:ok, %{"list" => [1, 2, 3], "scalar" => 1.5, "zero_d" => t}} =
               exec(ctx, "numpy_values")

      assert t == Tensor.new(<<7::signed-little-16>>, {:s, 16}, {})
      assert {:ok, [1.0, 2.0]} = exec(ctx, "echo", %{value: [1.0, 2.0]})
      assert {:ok, %{"type" => "list"}} = exec(ctx, "tensor_info", %{t: [1.0, 2.0]})
    end

    test "arrays of other dtypes are refused with a clear error", ctx do
      for dtype <- ["U3", "object", "datetime64[s]", "longdouble", "i4,f4"] do
        assert {:error, %Error{category: :python_error} = e} =
                 exec(ctx, "unsendable_array", %{dtype: dtype})

        assert e.message =~ "cannot send a numpy array of dtype", "#{dtype}: #{e.message}"
      end

      assert {:ok, 3} = exec(ctx, "add", %{a: 1, b: 2})
    end

    test "a large tensor's data is a sub-binary of the frame, not a copy", ctx do
      assert {:ok, %{"t" => t, "before" => _, "after" => [0, 1, 2, 3, 4]}} =
               exec(ctx, "big_tensor", %{n: 100_000})

      assert t.shape == {100_000} and byte_size(t.data) == 400_000
      assert :binary.referenced_byte_size(t.data) > byte_size(t.data)
      assert t.data == :binary.copy(<<1.0::float-little-32>>, 100_000)
    end

    test "a malformed tensor from a worker is a transport error", ctx do
      # version 1, float 32, 1 dim of 2 elements, but only 4 bytes of data
      bad = <<1, ?f, 32::16, 1, 0, 0, 0, 2::64, 0, 0, 0, 0>>

      for payload <- [
            bad,
            <<1, ?x, 8::16, 0, 0, 0, 0, 1>>,
            <<2, ?f, 32::16, 0, 0, 0, 0>>,
            <<1, ?f>>
          ] do
        assert {:error, %Error{category: :transport, message: msg}} =
                 exec(ctx, "bad_tensor", %{payload: payload})

        assert msg =~ "tensor extension", msg
      end

      assert {:ok, 3} = exec(ctx, "add", %{a: 1, b: 2})
    end
  end

  describe "Elixir to Python" do
    test "a tensor arrives as a numpy array of its dtype, shape and values", ctx do
      data = for x <- [1.5, -2.0, 3.0, 4.25], into: <<>>, do: <<x::float-little-32>>
      t = Tensor.new(data, {:f, 32}, {2, 2})

      assert {:ok, info} = exec(ctx, "tensor_info", %{t: t})

      assert %{"dtype" => "float32", "shape" => [2, 2], "sum" => 6.75, "byteorder" => bo} = info
      assert bo in ["<", "="]
      assert info["list"] == [[1.5, -2.0], [3.0, 4.25]]

      bools = Tensor.new(<<1, 0, 1>>, {:bool, 8}, {3})

      assert {:ok, %{"dtype" => "bool", "list" => [true, false, true]}} =
               exec(ctx, "tensor_info", %{t: bools})
    end

    test "inconsistent structs are refused with their path, before a worker sees them", ctx do
      served = TestPools.served(ctx.pool)
      base = %Tensor{dtype: {:f, 32}, shape: {2}, data: <<0::64>>}

      for {bad, why} <- [
            {%{base | data: <<0::32>>}, "is 4 bytes where its dtype and shape need 8"},
            {%{base | dtype: {:bf, 16}}, ":dtype is not one of"},
            {%{base | dtype: :f32}, ":dtype is not one of"},
            {%{base | shape: [2]}, ":shape is not a tuple"},
            {%{base | shape: {-2}}, ":shape is not a tuple"},
            {%{base | data: [1, 2]}, ":data is not a binary"},
            {%{base | data: <<0::63>>}, ":data is not whole bytes"},
            {Map.delete(base, :data), "without a :data"}
          ] do
        assert {:error, %Error{category: :validation} = e} =
                 exec(ctx, "tensor_echo", %{t: %{"in" => [bad]}})

        assert e.details.path == ~s(args[:t]["in"][0]), e.message
        assert e.message =~ why
      end

      assert TestPools.served(ctx.pool) == served
    end

    test "other structs and maps are still maps", ctx do
      assert {:ok, %{"dtype" => "x", "shape" => [1]}} =
               exec(ctx, "echo", %{value: %{dtype: "x", shape: {1}}})
    end
  end

  describe "the codec alone" do
    test "tensors round-trip through the NIF" do
      for {dtype, _} <- @dtypes, shape <- @shapes do
        t = Tensor.new(arange(dtype, shape), dtype, shape)
        assert Native.codec_roundtrip(%{"t" => t}) == {:ok, %{"t" => t}}
      end
    end

    test "a tensor with a huge shape is refused, not overflowed" do
      t = %Tensor{dtype: {:f, 64}, shape: {2 ** 40, 2 ** 40}, data: <<>>}
      assert {:error, msg} = Native.codec_roundtrip(t)
      assert msg =~ "need more than 2^64"
    end

    test "malformed tensor extensions are decode errors" do
      ext = fn payload -> <<0xC7, byte_size(payload), 84>> <> payload end

      assert {:error, msg} =
               Native.decode_frame(ext.(<<1, ?f, 32::16, 1, 0, 0, 0, 3::64, 0::32>>), 0)

      assert msg =~ "does not match its shape"
      assert {:error, _} = Native.decode_frame(ext.(<<1, ?f, 32::16, 9, 0, 0, 0>>), 0)
      assert {:error, _} = Native.decode_frame(ext.(<<1, ?f, 24::16, 0, 0, 0, 0, 0::24>>), 0)

      assert {:error, _} =
               Native.decode_frame(ext.(<<1, ?f, 32::16, 2, 0, 0, 0, 2 ** 63::64, 4::64>>), 0)

      # Other extension types are untouched.
      assert Native.decode_frame(<<0xD4, 5, 42>>, 0) == {:ok, {:msgpack_ext, 5, <<42>>}}
    end

    test "new/3 validates" do
      assert_raise ArgumentError, ~r/unknown tensor dtype/, fn ->
        Tensor.new(<<>>, {:bf, 16}, {0})
      end

      assert_raise ArgumentError, ~r/shape/, fn -> Tensor.new(<<>>, {:u, 8}, [0]) end
      assert_raise ArgumentError, ~r/binary/, fn -> Tensor.new(nil, {:u, 8}, {0}) end
      assert %Tensor{shape: {0, 3}} = Tensor.new(<<>>, {:c, 128}, {0, 3})
    end
  end

  describe "a long stream of tensors" do
    # 2,000 tensors of 256 KiB (500 MiB in all) through one stream: each
    # arrives whole and in order, and neither the worker's RSS nor the VM's
    # binary memory grows with the count.
    test "arrives in order without memory growth" do
      pool = TestPools.start_pool(size: 1)
      rss = fn -> Enum.at(Snakepit.list_workers(pool), 0).rss_bytes end
      binary_memory = fn -> :erlang.garbage_collect() && :erlang.memory(:binary) end
      size = 64 * 1024
      n = 2_000
      vm_before = binary_memory.()

      rss_samples =
        Snakepit.stream("tensor_stream", %{n: n, size: size}, pool: pool)
        |> Stream.with_index()
        |> Stream.flat_map(fn {%Tensor{dtype: {:f, 32}, shape: {^size}, data: data}, i} ->
          value = i / 1
          assert <<^value::float-32-little, _::binary>> = data
          assert byte_size(data) == size * 4
          if rem(i, 200) == 199, do: [rss.()], else: []
        end)
        |> Enum.to_list()

      assert length(rss_samples) == div(n, 200)
      [first | _] = rss_samples
      assert Enum.max(rss_samples) - first < 16 * 1024 * 1024, "worker RSS: #{inspect(rss_samples)}"
      vm_growth = binary_memory.() - vm_before
      assert vm_growth < 16 * 1024 * 1024, "VM binary memory grew by #{vm_growth} bytes"
    end
  end
end
