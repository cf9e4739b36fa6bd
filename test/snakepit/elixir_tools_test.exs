defmodule Snakepit.ElixirToolsTest do
  # Python calls Elixir (ctx.call_elixir), through real workers: values,
  # errors, timeouts, tensors, cancels, and chains that call the pool back.
  use ExUnit.Case, async: true

  alias Snakepit.{Error, TestPools, Tensor}

  doctest Snakepit.ElixirTools

  # Functions of the pool option :elixir_tools.
  def double(%{"x" => x}), do: {:ok, 2 * x}
  def echo_args(args), do: args
  def plain_ok(_args), do: :ok
  def fails(%{"how" => how}), do: fail(how)

  defp fail("raise"), do: raise(ArgumentError, "bad input")
  defp fail("throw"), do: throw(:thrown)
  defp fail("exit"), do: exit(:gone)
  defp fail("error_atom"), do: {:error, :enoent}
  defp fail("error_text"), do: {:error, "no such thing"}

  defp fail("snakepit_error"),
    do: {:error, Error.validation("quota exceeded", %{limit: 3, who: self()})}

  defp fail("raise_snakepit_error"), do: raise(Error.timeout("inner call timed out"))
  defp fail("unsendable"), do: {:ok, %{"pid" => self()}}

  setup_all do
    pool =
      TestPools.start_pool(
        size: 2,
        elixir_tools: %{
          "double" => {__MODULE__, :double},
          :echo_args => {__MODULE__, :echo_args},
          "plain_ok" => {__MODULE__, :plain_ok},
          "fails" => {__MODULE__, :fails}
        }
      )

    # A chain back into the pool: the tool runs on one worker, this
    # function's call to the pool on another. It tells which worker called
    # it (Logger metadata of the function's process) and which ran `pid`.
    :ok =
      Snakepit.register_tool(pool, "nested_pid", fn _args ->
        {:ok, b_pid} = Snakepit.execute("pid", %{}, pool: pool, timeout: 10_000)
        {:ok, %{"a_worker" => Logger.metadata()[:snakepit_worker], "b_pid" => b_pid}}
      end)

    :ok =
      Snakepit.register_tool(pool, "nested_add", fn %{"x" => x} ->
        Snakepit.execute("add", %{a: x, b: 1}, pool: pool)
      end)

    # Depth 2: a tool calls this, which calls a tool that calls nested_add,
    # which calls the pool: a third worker is needed.
    :ok =
      Snakepit.register_tool(pool, "nested_deeper", fn %{"timeout" => timeout} ->
        Snakepit.execute("elixir", %{name: "nested_add", args: %{x: 1}, timeout: timeout},
          pool: pool,
          timeout: 10_000
        )
      end)

    %{pool: pool}
  end

  defp exec(ctx, tool, args, opts \\ []),
    do: Snakepit.execute(tool, args, Keyword.merge([pool: ctx.pool, timeout: 15_000], opts))

  # Registers, under a fresh name, a function that tells the test its pid,
  # then waits until it is killed.
  defp register_sleeper(ctx) do
    test = self()
    name = "sleeper_#{System.unique_integer([:positive])}"

    :ok =
      Snakepit.register_tool(ctx.pool, name, fn _args ->
        send(test, {:sleeper, self()})
        Process.sleep(:infinity)
      end)

    name
  end

  defp await_sleeper do
    assert_receive {:sleeper, pid}, 5_000
    ref = Process.monitor(pid)
    {pid, ref}
  end

  describe "values" do
    test "a tool gets the function's value: {:ok, value}, :ok, or a plain value", ctx do
      assert exec(ctx, "elixir", %{name: "double", args: %{x: 21}}) == {:ok, 42}
      assert exec(ctx, "elixir", %{name: "plain_ok"}) == {:ok, nil}

      assert exec(ctx, "elixir", %{name: "echo_args", args: %{a: [1, "two", nil], b: %{c: 1.5}}}) ==
               {:ok, %{"a" => [1, "two", nil], "b" => %{"c" => 1.5}}}
    end

    test "with call_elixir_async from an async tool", ctx do
      assert exec(ctx, "elixir_async", %{name: "double", args: %{x: 4}}) == {:ok, 8}
    end

    test "functions registered at run time replace, and go", ctx do
      :ok = Snakepit.register_tool(ctx.pool, :tripled, fn %{"x" => x} -> {:ok, 3 * x} end)
      assert exec(ctx, "elixir", %{name: "tripled", args: %{x: 2}}) == {:ok, 6}
      :ok = Snakepit.register_tool(ctx.pool, "tripled", {__MODULE__, :double})
      assert exec(ctx, "elixir", %{name: "tripled", args: %{x: 2}}) == {:ok, 4}
      :ok = Snakepit.unregister_tool(ctx.pool, "tripled")

      assert {:ok, %{"error" => %{"category" => "validation"}}} =
               exec(ctx, "elixir", %{name: "tripled", args: %{x: 2}})
    end

    test "tensors and binaries cross both ways, large ones too", ctx do
      test = self()
      big = :binary.copy(<<255, 7>>, 1_500_000)

      :ok =
        Snakepit.register_tool(ctx.pool, "tensors", fn args ->
          send(test, {:got, args})
          t = Tensor.new(<<1.5::float-little-64, 2.5::float-little-64>>, {:f, 64}, {2})
          {:ok, %{"t" => t, "b" => <<0, 255>>, "big" => big, "echo" => args["t"]}}
        end)

      assert {:ok, result} = exec(ctx, "elixir_tensor", %{name: "tensors", n: 300_000})
      assert_received {:got, %{"t" => %Tensor{dtype: {:f, 32}, shape: {300_000}} = sent, "b" => b}}
      assert b == :binary.list_to_bin(Enum.to_list(0..255))
      <<first::float-little-32, second::float-little-32, _::binary>> = sent.data
      assert {first, second} == {0.0, 1.0}

      assert result["t"] == %{
               "type" => "ndarray",
               "dtype" => "float64",
               "shape" => [2],
               "sum" => 4.0
             }

      assert result["b"] == %{"type" => "bytes"}
      assert result["big"] == %{"type" => "bytes"}
      assert result["returned"]["big"] == big
      assert result["echo"]["shape"] == [300_000]
      assert %Tensor{dtype: {:f, 32}, shape: {300_000}} = result["returned"]["echo"]
    end
  end

  describe "errors" do
    test "a raise, a throw, an exit and {:error, _} reach the tool as ElixirError", ctx do
      call = fn how -> exec(ctx, "elixir", %{name: "fails", args: %{how: how}}) end

      assert {:ok, %{"error" => raised}} = call.("raise")
      assert raised["category"] == "elixir_error"
      assert raised["code"] == "elixir_error"
      assert raised["name"] == "fails"
      assert raised["message"] =~ "ArgumentError"
      assert raised["message"] =~ "bad input"
      assert raised["details"]["kind"] == "error"
      assert raised["details"]["exception"] == "ArgumentError"
      assert raised["details"]["stacktrace"] =~ "fail/1"

      assert {:ok, %{"error" => thrown}} = call.("throw")
      assert {thrown["category"], thrown["details"]["kind"]} == {"elixir_error", "throw"}
      assert thrown["message"] =~ ":thrown"

      assert {:ok, %{"error" => exited}} = call.("exit")
      assert {exited["category"], exited["details"]["kind"]} == {"elixir_error", "exit"}

      assert {:ok, %{"error" => %{"category" => "elixir_error", "message" => "enoent"}}} =
               call.("error_atom")

      assert {:ok, %{"error" => %{"category" => "elixir_error", "message" => "no such thing"}}} =
               call.("error_text")
    end

    test "a %Snakepit.Error{} returned or raised keeps its category, message and details", ctx do
      call = fn how -> exec(ctx, "elixir", %{name: "fails", args: %{how: how}}) end

      assert {:ok, %{"error" => error}} = call.("snakepit_error")
      assert {error["category"], error["message"]} == {"validation", "quota exceeded"}
      # A pid in the details cannot cross: it comes as its text.
      assert %{"limit" => 3, "who" => "#PID<" <> _} = error["details"]

      assert {:ok, %{"error" => raised}} = call.("raise_snakepit_error")
      assert {raised["category"], raised["message"]} == {"timeout", "inner call timed out"}
      assert raised["details"]["kind"] == "error"
    end

    test "a result that cannot be sent is a validation error naming where it is", ctx do
      assert {:ok, %{"error" => error}} =
               exec(ctx, "elixir", %{name: "fails", args: %{how: "unsendable"}})

      assert error["category"] == "validation"
      assert error["message"] =~ ~s(cannot send a pid at result["pid"])
    end

    test "an unknown name is a validation error", ctx do
      assert {:ok, %{"error" => error}} = exec(ctx, "elixir", %{name: "nope", args: %{}})
      assert error["category"] == "validation"
      assert error["message"] =~ ~s(no Elixir function named "nope")
      assert error["message"] =~ "double"
      assert error["details"] == %{"name" => "nope"}
    end

    test "left uncaught, it fails the tool's call as a ToolError with the category as its code",
         ctx do
      assert {:error, %Error{category: :python_error} = e} =
               exec(ctx, "elixir_uncaught", %{name: "fails", args: %{how: "raise"}})

      assert e.details.exception_type == "ElixirError"
      assert e.details.code == "elixir_error"
      assert e.details["kind"] == "error"
    end
  end

  describe "timeouts and cancels" do
    test "past its timeout the function's process is killed and the tool gets a timeout", ctx do
      name = register_sleeper(ctx)
      started = System.monotonic_time(:millisecond)

      task = Task.async(fn -> exec(ctx, "elixir", %{name: name, args: %{}, timeout: 0.3}) end)

      {pid, ref} = await_sleeper()
      assert {:ok, %{"error" => error}} = Task.await(task, 10_000)
      assert System.monotonic_time(:millisecond) - started < 5_000
      assert error["category"] == "timeout"
      assert error["message"] =~ "did not return within 300 ms"
      assert error["details"]["timeout_ms"] == 300
      assert_receive {:DOWN, ^ref, :process, ^pid, :killed}, 1_000
    end

    test "a cancel of the outer call interrupts the wait; the function is killed; the worker goes on",
         ctx do
      pids = TestPools.os_pids(ctx.pool)

      for tool <- ["elixir_cancellable", "elixir_cancellable_async"] do
        name = register_sleeper(ctx)

        marker =
          Path.join(System.tmp_dir!(), "snakepit_marker_#{System.unique_integer([:positive])}")

        on_exit(fn -> File.rm(marker) end)
        task = Task.async(fn -> exec(ctx, tool, %{name: name, marker: marker}, timeout: 500) end)
        {pid, ref} = await_sleeper()
        assert {:error, %Error{category: :timeout}} = Task.await(task, 10_000)
        TestPools.wait_until(fn -> File.read(marker) == {:ok, "cancelled"} end)
        assert_receive {:DOWN, ^ref, :process, ^pid, :killed}, 5_000
      end

      # Both workers answer, and none was replaced.
      for _ <- 1..4, do: assert(exec(ctx, "add", %{a: 1, b: 2}) == {:ok, 3})
      assert Enum.sort(TestPools.os_pids(ctx.pool)) == Enum.sort(pids)
    end

    test "a worker that dies while its function runs has the function killed", ctx do
      name = register_sleeper(ctx)
      task = Task.async(fn -> exec(ctx, "elixir", %{name: name, args: %{}}) end)
      {pid, ref} = await_sleeper()
      [worker] = Enum.filter(Snakepit.list_workers(ctx.pool), &(&1.state == :busy))
      System.cmd("kill", ["-9", Integer.to_string(worker.os_pid)])
      assert {:error, %Error{category: :worker}} = Task.await(task, 10_000)
      assert_receive {:DOWN, ^ref, :process, ^pid, :killed}, 5_000
      :ok = Snakepit.await_ready(ctx.pool, 30_000)
    end
  end

  describe "calling the pool back" do
    test "a chain Python -> Elixir -> Python completes on another worker", ctx do
      assert {:ok, %{"a_worker" => a_worker, "b_pid" => b_pid}} =
               exec(ctx, "elixir", %{name: "nested_pid"})

      a_pid = Enum.find(Snakepit.list_workers(ctx.pool), &(&1.worker_id == a_worker)).os_pid
      assert a_pid != b_pid
      assert exec(ctx, "elixir", %{name: "nested_add", args: %{x: 41}}) == {:ok, 42}
      assert exec(ctx, "elixir_async", %{name: "nested_add", args: %{x: 1}}) == {:ok, 2}
    end

    test "nothing is written behind a call waiting for Elixir; what waits there is taken back" do
      # No reclaim ticks: only the wait for Elixir may take calls back.
      pool = TestPools.start_pool(size: 2, reclaim_after: :infinity)
      name = register_sleeper(%{pool: pool})
      {gate_x, release_x} = TestPools.gate()
      {gate_a, release_a} = TestPools.gate()
      stats = fn -> Snakepit.get_stats(pool) end
      run = &Task.async(fn -> Snakepit.execute(&1, &2, pool: pool, timeout: 30_000) end)

      x = run.("block_until", %{path: gate_x})
      TestPools.wait_until(fn -> stats.().in_flight == 1 end)
      # A runs on the other worker, and calls Elixir once gate_a opens.
      a = run.("elixir", %{name: name, wait_for: gate_a, timeout: 30})
      TestPools.wait_until(fn -> stats.().in_flight == 2 end)
      # One call pipelined behind each: behind X and behind A.
      ys = for i <- 1..2, do: run.("echo", %{value: i})
      TestPools.wait_until(fn -> match?(%{in_flight: 4, queued: 0}, stats.()) end)

      release_a.()
      {sleeper, ref} = await_sleeper()
      release_x.()
      assert Task.await(x) == {:ok, "released"}
      # The call that waited behind A was given back and ran behind X.
      assert Enum.map(ys, &Task.await(&1, 5_000)) == [{:ok, 1}, {:ok, 2}]
      # Nothing new goes behind A while it waits.
      zs = for i <- 3..6, do: run.("echo", %{value: i})
      assert Enum.map(zs, &Task.await(&1, 5_000)) == [{:ok, 3}, {:ok, 4}, {:ok, 5}, {:ok, 6}]
      assert Process.alive?(sleeper)
      assert stats.().requeued >= 1

      Process.exit(sleeper, :kill)
      assert_receive {:DOWN, ^ref, :process, ^sleeper, :killed}

      assert {:ok, %{"error" => %{"category" => "elixir_error", "message" => message}}} =
               Task.await(a)

      assert message =~ "exited"
    end

    test "a chain of depth 2 in a pool of 2 needs a third worker: the timeout ends it", ctx do
      # tool -> nested_deeper -> tool "elixir" -> nested_add -> "add": the
      # "add" call finds both workers waiting and queues, and the inner
      # function's timeout (0.5 s) ends the wait, never a silent hang.
      assert {:ok, %{"error" => error}} =
               exec(ctx, "elixir", %{name: "nested_deeper", args: %{timeout: 0.5}})

      assert error["category"] == "timeout"
      # The pool is whole again.
      for _ <- 1..4, do: assert(exec(ctx, "add", %{a: 1, b: 1}) == {:ok, 2})
    end

    test "depth 2 completes when the pool has the workers for it" do
      pool = TestPools.start_pool(size: 3, elixir_tools: %{"double" => {__MODULE__, :double}})

      :ok =
        Snakepit.register_tool(pool, "nested_twice", fn %{"x" => x} ->
          Snakepit.execute("elixir", %{name: "double", args: %{x: x}}, pool: pool)
        end)

      assert Snakepit.execute("elixir", %{name: "nested_twice", args: %{x: 5}}, pool: pool) ==
               {:ok, 10}
    end
  end

  describe "calling the pool back from a worker with concurrency" do
    test "a chain of depth 2 completes on one worker with 3 slots: each level takes a slot" do
      pool =
        TestPools.start_pool(
          size: 1,
          concurrency: 3,
          elixir_tools: %{"double" => {__MODULE__, :double}}
        )

      :ok =
        Snakepit.register_tool(pool, "nested_twice", fn %{"x" => x} ->
          Snakepit.execute("elixir", %{name: "double", args: %{x: x}}, pool: pool)
        end)

      :ok =
        Snakepit.register_tool(pool, "nested_pid", fn _args ->
          Snakepit.execute("pid", %{}, pool: pool, timeout: 10_000)
        end)

      [os_pid] = TestPools.os_pids(pool)
      assert Snakepit.execute("elixir", %{name: "nested_pid"}, pool: pool) == {:ok, os_pid}

      assert Snakepit.execute("elixir", %{name: "nested_twice", args: %{x: 5}}, pool: pool) ==
               {:ok, 10}
    end
  end

  describe "a worker that breaks the protocol" do
    @tag :capture_log
    test "a malformed elixir_call: its call gets a :transport error, the pool goes on" do
      for tool <- ~w(elixir_call_body_nil elixir_call_no_name elixir_call_args_list
                     elixir_call_timeout_zero elixir_call_id_0) do
        opts = TestPools.hostile_opts()
        start_supervised!({Snakepit.Pool, opts}, id: tool)
        :ok = Snakepit.await_ready(opts[:name], 10_000)

        assert {:error, %Error{category: :transport, message: message}} =
                 Snakepit.execute(tool, %{}, pool: opts[:name])

        assert message =~ "elixir_call", "#{tool}: #{message}"
        :ok = Snakepit.await_ready(opts[:name], 10_000)
        assert Snakepit.execute("echo", %{value: 1}, pool: opts[:name]) == {:ok, 1}
      end
    end
  end

  describe "options" do
    test ":elixir_tools and register_tool/3 refuse what cannot be called" do
      for bad <- [%{"f" => :not_a_fun}, %{"f" => fn -> :ok end}, %{"" => {M, :f}}, [:x], :x] do
        assert {:error, %Error{category: :validation, details: %{option: :elixir_tools}}} =
                 Snakepit.Config.validate(adapter: "m.A", elixir_tools: bad)
      end

      assert {:ok, %{elixir_tools: %{"a" => {M, :f}}}} =
               Snakepit.Config.validate(adapter: "m.A", elixir_tools: [a: {M, :f}])

      assert {:error, %Error{category: :validation}} =
               Snakepit.register_tool(:default, "f", fn -> :ok end)

      assert {:error, %Error{category: :validation}} =
               Snakepit.register_tool(:default, String.duplicate("x", 256), fn _ -> :ok end)

      assert {:error, %Error{category: :pool}} =
               Snakepit.register_tool(:no_such_pool, "f", fn _ -> :ok end)
    end
  end
end
