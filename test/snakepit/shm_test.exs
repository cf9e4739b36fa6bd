defmodule Snakepit.ShmTest do
  # Payloads past :shm_threshold cross in shared memory (memfd segments),
  # through real workers. async: false: it counts segments system-wide and
  # reads :erlang.memory(:binary).
  use ExUnit.Case, async: false

  alias Snakepit.{Error, TestPools, Tensor}

  @threshold 1024 * 1024

  setup_all do
    %{pool: TestPools.start_pool(size: 2, shm_threshold: @threshold)}
  end

  defp exec(ctx, tool, args \\ %{}, opts \\ []),
    do: Snakepit.execute(tool, args, Keyword.merge([pool: ctx.pool, timeout: 60_000], opts))

  defp shm_bytes(pool), do: Snakepit.get_stats(pool).shm_bytes

  # Every memfd segment on the machine (any process), counted by scanning
  # /proc/*/fd and /proc/*/maps: each open fd and each mapping counts.
  defp memfds_everywhere do
    for pid <- File.ls!("/proc"), pid =~ ~r/^\d+$/, reduce: 0 do
      acc -> acc + memfds_of(pid)
    end
  end

  defp memfds_of(pid) do
    fds =
      case File.ls("/proc/#{pid}/fd") do
        {:ok, fds} ->
          Enum.count(fds, fn fd ->
            match?({:ok, "/memfd:snakepit" <> _}, File.read_link("/proc/#{pid}/fd/#{fd}"))
          end)

        _ ->
          0
      end

    maps =
      case File.read("/proc/#{pid}/maps") do
        {:ok, maps} -> maps |> String.split("\n") |> Enum.count(&(&1 =~ "memfd:snakepit"))
        _ -> 0
      end

    fds + maps
  end

  defp arange_f32(n), do: for(i <- 0..(n - 1), into: <<>>, do: <<i * 1.0::float-little-32>>)

  # The pool's shared-memory bytes drop to `bytes` once every process that
  # may hold a segment's binary has been garbage-collected.
  defp await_shm_bytes(pool, bytes, tries \\ 100) do
    :erlang.garbage_collect()

    cond do
      shm_bytes(pool) == bytes ->
        :ok

      tries == 0 ->
        flunk("shm_bytes stayed at #{shm_bytes(pool)}, expected #{bytes}")

      true ->
        Process.sleep(20)
        await_shm_bytes(pool, bytes, tries - 1)
    end
  end

  # Checks in functions of their own: once they return, nothing of the
  # results is left on the test process's stack.
  defp check_bytes(ctx, n) do
    assert {:ok, bin} = exec(ctx, "make_bytes", %{n: n})
    expected = :binary.copy(:binary.list_to_bin(Enum.to_list(0..255)), div(n, 256))
    assert bin == expected <> :binary.list_to_bin(Enum.to_list(0..(rem(n, 256) - 1)//1))
    :erlang.garbage_collect()
    assert shm_bytes(ctx.pool) == n
    byte_size(bin)
  end

  defp check_pair(ctx, n) do
    assert {:ok, %{"a" => a, "b" => b, "x" => 1}} = exec(ctx, "shm_pair", %{n: n})
    assert a.data == arange_f32(n)
    assert b.data == :binary.copy(<<2.5::float-little-32>>, n)
    :erlang.garbage_collect()
    assert shm_bytes(ctx.pool) == 8 * n
    # Used after the check, so both are alive through it.
    assert byte_size(a.data) + byte_size(b.data) == 8 * n
  end

  describe "Python -> Elixir" do
    test "a tensor past the threshold arrives equal, pointing into the mapping", ctx do
      n = 400_000

      assert {:ok, %Tensor{dtype: {:f, 32}, shape: {^n}, data: data} = t} =
               exec(ctx, "make_tensor", %{dtype: "float32", shape: [n]})

      assert data == arange_f32(n)
      # Not a copy: after a GC, the mapping is still held, by `t` alone.
      :erlang.garbage_collect()
      assert shm_bytes(ctx.pool) == 4 * n
      assert memfds_of(System.pid()) >= 1
      # Used after the check, so `t` is alive through it.
      assert byte_size(t.data) == 4 * n
      t = nil
      _ = t
      await_shm_bytes(ctx.pool, 0)
    end

    test "bytes past the threshold, and small values beside tensors", ctx do
      n = 3 * 1024 * 1024 + 5
      check_bytes(ctx, n)
      await_shm_bytes(ctx.pool, 0)
      check_pair(ctx, 300_000)
      await_shm_bytes(ctx.pool, 0)
    end

    test "below the threshold, values stay in the frame", ctx do
      assert {:ok, %Tensor{}} = exec(ctx, "make_tensor", %{dtype: "float32", shape: [1000]})
      assert {:ok, bin} = exec(ctx, "make_bytes", %{n: @threshold - 1})
      assert byte_size(bin) == @threshold - 1
      assert shm_bytes(ctx.pool) == 0
    end

    test "stream chunks past the threshold", ctx do
      chunks =
        Snakepit.stream("shm_chunks", %{n: 3, size: @threshold + 1}, pool: ctx.pool)
        |> Enum.to_list()

      assert chunks == for(i <- 0..2, do: :binary.copy(<<i>>, @threshold + 1))
      chunks = nil
      _ = chunks
      await_shm_bytes(ctx.pool, 0)
    end
  end

  describe "Elixir -> Python" do
    test "a tensor argument arrives as an array over the mapping; bytes as bytes", ctx do
      n = 500_000
      t = Tensor.new(arange_f32(n), {:f, 32}, {n})
      crc = :erlang.crc32(t.data)

      assert {:ok, %{"type" => "ndarray", "size" => size, "crc" => ^crc, "mapped" => true}} =
               exec(ctx, "shm_arg_info", %{value: t})

      assert size == 4 * n
      bin = :crypto.strong_rand_bytes(@threshold + 7)
      crc = :erlang.crc32(bin)
      assert {:ok, %{"type" => "bytes", "crc" => ^crc}} = exec(ctx, "shm_arg_info", %{value: bin})
      # Below the threshold: in the frame.
      small = Tensor.new(arange_f32(1000), {:f, 32}, {1000})
      assert {:ok, %{"mapped" => false}} = exec(ctx, "shm_arg_info", %{value: small})
      await_shm_bytes(ctx.pool, 0)
    end

    test "a tensor round-trips both ways by shared memory", ctx do
      check_echo(ctx, 700_000)
      await_shm_bytes(ctx.pool, 0)
    end
  end

  defp check_echo(ctx, n) do
    t = Tensor.new(arange_f32(n), {:f, 32}, {n})
    assert {:ok, %{"nested" => [^t]}} = exec(ctx, "tensor_echo", %{t: %{"nested" => [t]}})
    :ok
  end

  describe "limits" do
    setup do
      %{small: TestPools.start_pool(size: 1, shm_threshold: 1024, shm_max_bytes: 100_000)}
    end

    test "a call over :shm_max_bytes is refused with a :pool error", ctx do
      bin = :binary.copy(<<1>>, 150_000)

      assert {:error, %Error{category: :pool, details: %{bytes: 150_000, limit: 100_000}} = e} =
               Snakepit.execute("shm_arg_info", %{value: bin}, pool: ctx.small)

      assert e.message =~ ":shm_max_bytes"
      assert Snakepit.get_stats(ctx.small).shm_bytes == 0
    end

    test "a result over :shm_max_bytes fails cleanly with a :pool error", ctx do
      assert {:error, %Error{category: :pool, details: %{bytes: 150_000, limit: 100_000}}} =
               Snakepit.execute("make_bytes", %{n: 150_000}, pool: ctx.small)

      assert Snakepit.get_stats(ctx.small).shm_bytes == 0
      # The worker goes on.
      assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: ctx.small)
      assert {:ok, bin} = Snakepit.execute("make_bytes", %{n: 50_000}, pool: ctx.small)
      assert byte_size(bin) == 50_000
    end
  end

  describe "1 GB with default settings" do
    # The frame limit stays 64 MiB: only shared memory can carry these.
    @describetag :shm_1gb
    @describetag timeout: 120_000

    setup do
      %{big: TestPools.start_pool(size: 1)}
    end

    test "a 1 GB tensor from Python", ctx do
      check_big_result(ctx.big, 250_000_000)
      await_shm_bytes(ctx.big, 0)
    end

    test "a 1 GB tensor to Python", ctx do
      check_big_argument(ctx.big, 250_000_000)
      await_shm_bytes(ctx.big, 0)
    end
  end

  defp check_big_result(pool, n) do
    assert {:ok, %Tensor{shape: {^n}, data: data}} =
             Snakepit.execute("filled_tensor", %{n: n, value: 0.5},
               pool: pool,
               timeout: 60_000
             )

    assert byte_size(data) == 4 * n
    one = <<0.5::float-little-32>>
    assert binary_part(data, 0, 4) == one and binary_part(data, 4 * n - 4, 4) == one
    assert binary_part(data, div(n, 2) * 4, 4096) == :binary.copy(one, 1024)
    :ok
  end

  defp check_big_argument(pool, n) do
    t = Tensor.new(:binary.copy(<<0.25::float-little-32>>, n), {:f, 32}, {n})
    crc = :erlang.crc32(t.data)

    assert {:ok, %{"size" => size, "crc" => ^crc, "mapped" => true}} =
             Snakepit.execute("shm_arg_info", %{value: t}, pool: pool, timeout: 60_000)

    assert size == 4 * n
    :ok
  end
end
