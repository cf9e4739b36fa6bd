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

  defp exec(ctx, tool, args),
    do: Snakepit.execute(tool, args, pool: ctx.pool, timeout: 60_000)

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
  defp await_shm_bytes(pool, bytes) do
    TestPools.wait_until(
      fn ->
        :erlang.garbage_collect()
        shm_bytes(pool) == bytes
      end,
      5_000,
      fn -> "shm_bytes stayed at #{shm_bytes(pool)}, expected #{bytes}" end
    )
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

  defp check_nested(ctx) do
    big = :crypto.strong_rand_bytes(@threshold + 7)

    assert {:ok, %{"list" => [^big, "small"], "n" => 1} = result} =
             exec(ctx, "echo", %{value: %{list: [big, "small"], n: 1}})

    # The argument went by segment too; the host gives it back just after
    # sending the answer, so it is awaited. Then only the result's is held.
    await_shm_bytes(ctx.pool, @threshold + 7)
    # Used after the check, so it is alive through it.
    assert byte_size(hd(result["list"])) == @threshold + 7
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

    test "bytes nested in a result past the threshold go by segment too", ctx do
      check_nested(ctx)
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

    test "a call with blobs (64 KiB to the threshold) and segments both", ctx do
      blob = :binary.copy(<<3>>, 100_000)
      big = :binary.copy(<<4>>, @threshold + 1)
      t = Tensor.new(arange_f32(300_000), {:f, 32}, {300_000})
      args = %{t: %{"blob" => blob, "big" => big, "tensor" => t, "blob2" => blob <> "x"}}

      assert {:ok, %{"blob" => ^blob, "big" => ^big, "tensor" => ^t, "blob2" => blob2}} =
               exec(ctx, "tensor_echo", args)

      assert blob2 == blob <> "x"
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

  describe "nothing leaks whoever dies" do
    setup do
      %{solo: TestPools.start_pool(size: 1, shm_threshold: @threshold)}
    end

    defp binary_memory do
      for pid <- Process.list(), do: :erlang.garbage_collect(pid)
      :erlang.memory(:binary)
    end

    # A little slack for binaries other processes of the VM make meanwhile.
    @slack 4 * 1024 * 1024

    test "a worker SIGKILLed while it holds a call's segment", ctx do
      baseline = {memfds_everywhere(), binary_memory()}
      flag = Path.join(TestPools.tmp_dir("shm_kill"), "go")
      [os_pid] = TestPools.os_pids(ctx.solo)
      me = self()

      caller =
        spawn(fn ->
          t = Tensor.new(:binary.copy(<<1.5::float-little-32>>, 5_000_000), {:f, 32}, {5_000_000})
          send(me, {:result, Snakepit.execute("hold_arg", %{value: t, path: flag}, pool: ctx.solo)})
        end)

      # The worker holds the mapping, the host its fd.
      TestPools.wait_until(fn -> memfds_of("#{os_pid}") >= 1 end)
      assert shm_bytes(ctx.solo) == 20_000_000
      {_, 0} = System.cmd("kill", ["-KILL", "#{os_pid}"])
      assert_receive {:result, {:error, %Error{category: :worker}}}, 10_000
      refute Process.alive?(caller)
      await_shm_bytes(ctx.solo, 0)
      TestPools.wait_until(fn -> memfds_everywhere() <= elem(baseline, 0) end)
      assert binary_memory() <= elem(baseline, 1) + @slack
    end

    test "a worker SIGKILLed between a result's segments and the result", ctx do
      baseline = memfds_everywhere()

      assert {:error, %Error{category: :worker}} =
               Snakepit.execute("shm_then_die", %{n: 10_000_000}, pool: ctx.solo)

      await_shm_bytes(ctx.solo, 0)
      TestPools.wait_until(fn -> memfds_everywhere() <= baseline end)
    end

    test "a caller that dies with its call's segments in flight, both ways", ctx do
      baseline = {memfds_everywhere(), binary_memory()}
      flag = Path.join(TestPools.tmp_dir("shm_caller"), "go")
      [os_pid] = TestPools.os_pids(ctx.solo)

      # Elixir -> Python: the caller dies while the worker holds its argument.
      caller =
        spawn(fn ->
          bin = :binary.copy(<<7>>, 20_000_000)
          Snakepit.execute("hold_arg", %{value: bin, path: flag}, pool: ctx.solo)
        end)

      # Killed once the worker has it (so the pool monitors the caller).
      TestPools.wait_until(fn -> memfds_of("#{os_pid}") >= 1 end)
      assert shm_bytes(ctx.solo) == 20_000_000
      Process.exit(caller, :kill)
      # Given up: the host closes its fds and gives the bytes back at once.
      await_shm_bytes(ctx.solo, 0)
      File.write!(flag, "")
      TestPools.wait_until(fn -> memfds_of("#{os_pid}") == 0 end)

      # Python -> Elixir: the caller dies before its 20 MB result arrives.
      File.rm!(flag)

      caller =
        spawn(fn -> Snakepit.execute("shm_hold", %{n: 20_000_000, path: flag}, pool: ctx.solo) end)

      TestPools.wait_until(fn -> Snakepit.get_stats(ctx.solo).busy == 1 end)
      Process.exit(caller, :kill)
      File.write!(flag, "")
      # Its answer is dropped with the mapping.
      TestPools.wait_until(fn -> Snakepit.get_stats(ctx.solo).busy == 0 end)
      await_shm_bytes(ctx.solo, 0)
      TestPools.wait_until(fn -> memfds_everywhere() <= elem(baseline, 0) end)
      assert binary_memory() <= elem(baseline, 1) + @slack
      assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: ctx.solo)
    end

    @python_dir Path.expand("../support/python", __DIR__)

    @tag timeout: 120_000
    test "a BEAM killed with SIGKILL while it holds segments both ways" do
      baseline = memfds_everywhere()
      {_lib, ebin} = TestPools.snakepit_app("snakepit_shm_killed_beam", :real_priv)
      flag = Path.join(TestPools.tmp_dir("shm_beam"), "never")

      script = """
      {:ok, _} = Application.ensure_all_started(:snakepit)
      {:ok, _} = Snakepit.Pool.start_link(name: :doomed, size: 2,
        adapter: "snakepit_test_adapters.TestAdapter", python_path: [#{inspect(@python_dir)}])
      :ok = Snakepit.await_ready(:doomed, 30_000)
      {:ok, held} = Snakepit.execute("filled_tensor", %{n: 5_000_000}, pool: :doomed)
      spawn(fn -> Snakepit.execute("hold_arg", %{value: :binary.copy(<<1>>, 20_000_000),
        path: #{inspect(flag)}}, pool: :doomed, timeout: :infinity) end)
      # On a worker: its argument's segment was made before it was queued.
      Snakepit.TestPools.wait_until(fn -> Snakepit.get_stats(:doomed).busy == 1 end)
      workers = Enum.map(Snakepit.list_workers(:doomed), & &1.os_pid)
      IO.puts("RUN \#{System.pid()} \#{Snakepit.get_stats(:doomed).shm_bytes} \#{Enum.join(workers, ",")}")
      # Holds both segments until the test SIGKILLs this BEAM.
      Process.sleep(:infinity)
      IO.inspect(held)
      """

      {port, [beam, held, workers]} = TestPools.run_beam(ebin, script)
      held = String.to_integer(held)
      workers = workers |> String.split(",") |> Enum.map(&String.to_integer/1)
      on_exit(fn -> System.cmd("kill", ["-KILL", beam], stderr_to_stdout: true) end)
      assert held == 40_000_000
      assert memfds_of(beam) >= 1
      # The worker holds the argument's mapping too.
      TestPools.wait_until(fn -> Enum.any?(workers, &(memfds_of("#{&1}") >= 1)) end)
      assert memfds_everywhere() >= baseline + 2
      {_, 0} = System.cmd("kill", ["-KILL", beam])
      assert_receive {^port, {:exit_status, _}}, 10_000
      TestPools.wait_until(fn -> not Enum.any?(workers, &TestPools.os_alive?/1) end)
      TestPools.wait_until(fn -> memfds_everywhere() <= baseline end)
    end
  end
end
