defmodule Snakepit.ExecuteTest do
  # Snakepit.execute/3 against real Python workers over real pipes.
  use ExUnit.Case, async: true

  alias Snakepit.{Error, TestPools}

  setup_all do
    opts = TestPools.opts(size: 2)
    start_supervised!({Snakepit.Pool, opts})
    :ok = Snakepit.await_ready(opts[:name], 30_000)
    %{pool: opts[:name]}
  end

  defp exec(ctx, tool, args \\ %{}, opts \\ []),
    do: Snakepit.execute(tool, args, Keyword.put_new(opts, :pool, ctx.pool))

  describe "values through Python and back" do
    test "every type in the mapping round-trips", ctx do
      values = [
        nil,
        true,
        false,
        0,
        -1,
        2 ** 63 - 1,
        -(2 ** 63),
        2 ** 64 - 1,
        3.25,
        -1.0e-10,
        "",
        "unicode: héllo ✓ 日本語 🐍",
        <<255, 254, 0, 128>>,
        [],
        %{},
        [1, "two", 3.0, nil, [true]],
        %{"nested" => %{"deeper" => [%{"x" => 1}]}, "list" => [[], %{}]},
        %{1 => "int key", "s" => "str key"},
        Map.new(1..20_000, &{"key#{&1}", [&1, "v#{&1}", &1 * 1.5]})
      ]

      for v <- values do
        assert exec(ctx, "echo", %{value: v}) == {:ok, v}, "for #{inspect(v)}"
      end
    end

    test "Python sees str for UTF-8 and bytes for other binaries", ctx do
      assert exec(ctx, "types", %{value: "text"}) == {:ok, "str"}
      assert exec(ctx, "types", %{value: <<0xFF>>}) == {:ok, "bytes"}
      assert exec(ctx, "types", %{value: {1, 2}}) == {:ok, "list"}
      assert exec(ctx, "types", %{value: 2 ** 64 - 1}) == {:ok, "int"}
    end

    test "atoms arrive as strings and map keys come back as binaries", ctx do
      assert exec(ctx, "types", %{value: :val}) == {:ok, "str"}
      assert exec(ctx, "echo", %{value: %{key: :val}}) == {:ok, %{"key" => "val"}}
    end

    test "non-finite floats come back as atoms", ctx do
      assert exec(ctx, "non_finite") ==
               {:ok, %{"nan" => :nan, "inf" => :infinity, "ninf" => :neg_infinity}}
    end

    test "large binaries in both directions", ctx do
      big = :crypto.strong_rand_bytes(1_000_000)
      assert exec(ctx, "echo", %{value: big}) == {:ok, big}
      assert {:ok, out} = exec(ctx, "make_bytes", %{n: 3_000_000})
      assert byte_size(out) == 3_000_000
      # make_bytes repeats the bytes 0..255, then a partial run.
      run = for b <- 0..255, into: <<>>, do: <<b>>

      assert out ==
               :binary.copy(run, div(3_000_000, 256)) <> binary_part(run, 0, rem(3_000_000, 256))
    end

    # Binaries of 64 KiB and more are spliced into the frame, not copied
    # (codec/encode.rs): whatever kind of binary they are, the worker gets the bytes.
    test "large binaries anywhere in the args: text or not, sub-binaries, unaligned", ctx do
      bin = :crypto.strong_rand_bytes(300_000)
      text = String.duplicate("héllo ", 50_000)
      sub = binary_part(bin, 1, 200_000)
      <<_::3, unaligned::binary-size(100_000), _::bitstring>> = bin

      value = %{
        "list" => [bin, 1, text],
        "tuple" => {text, sub},
        "unaligned" => unaligned,
        "small" => "x"
      }

      assert exec(ctx, "echo", %{value: value}) ==
               {:ok, %{value | "tuple" => [text, sub]}}

      assert exec(ctx, "types", %{value: text}) == {:ok, "str"}
      assert exec(ctx, "types", %{value: bin}) == {:ok, "bytes"}
      # Valid UTF-8 except for its very last byte: sent as bytes.
      assert exec(ctx, "types", %{value: text <> <<255>>}) == {:ok, "bytes"}
    end

    test "a keyword list works as args, and an atom as the command", ctx do
      assert Snakepit.execute(:add, [a: 1, b: 2], pool: ctx.pool) == {:ok, 3}
    end
  end

  describe "errors" do
    test "a Python exception carries its type, message and traceback", ctx do
      assert {:error, %Error{} = e} = exec(ctx, "boom", %{message: "bad input"})
      assert e.category == :python_error
      assert e.message == "ValueError: bad input"
      assert e.details.exception_type == "ValueError"
      assert e.details.tool == "boom"
      assert e.python_traceback =~ "Traceback (most recent call last)"
      assert e.python_traceback =~ "raise ValueError(message)"
    end

    test "an unknown tool is a validation error that lists the tools", ctx do
      assert {:error, %Error{category: :validation, message: msg}} = exec(ctx, "nope")
      assert msg =~ "unknown tool 'nope'"
      assert msg =~ "echo"
    end

    test "missing or extra arguments are validation errors", ctx do
      assert {:error, %Error{category: :validation} = e} = exec(ctx, "add", %{a: 1})
      assert e.message =~ "missing 1 required positional argument: 'b'"
      assert {:error, %Error{category: :validation} = e} = exec(ctx, "add", %{a: 1, b: 2, c: 3})
      assert e.message =~ "unexpected keyword argument 'c'"
    end

    test "a TypeError raised inside a tool stays a Python error", ctx do
      assert {:error, %Error{category: :python_error, message: "TypeError: " <> _}} =
               exec(ctx, "inner_type_error")
    end

    test "unencodable args are refused before reaching the worker, with their path", ctx do
      served = TestPools.served(ctx.pool)
      validation_errors = Snakepit.get_stats(ctx.pool).validation_errors

      for {bad, where} <- [
            {self(), "args[:value]"},
            {make_ref(), "args[:value]"},
            {fn -> 1 end, "args[:value]"},
            {2 ** 64, "args[:value]"},
            {[ok: 1, bad: [1, self()]], "args[:value][1][1][1]"}
          ] do
        assert {:error, %Error{category: :validation} = e} = exec(ctx, "echo", %{value: bad})
        assert e.details.path == where, "for #{inspect(bad)}: #{e.message}"
        assert e.message =~ "cannot send"
      end

      # No worker answered any of them: none was written to a worker.
      assert TestPools.served(ctx.pool) == served
      assert Snakepit.get_stats(ctx.pool).validation_errors == validation_errors + 5
      assert exec(ctx, "add", %{a: 1, b: 1}) == {:ok, 2}
    end

    test "a result Python cannot encode is an error, and the worker carries on", ctx do
      pids = TestPools.os_pids(ctx.pool)
      served = TestPools.served(ctx.pool)
      assert {:error, %Error{category: :python_error} = e} = exec(ctx, "huge_int")
      assert e.message =~ "cannot be sent"
      assert exec(ctx, "add", %{a: 1, b: 1}) == {:ok, 2}
      # The same processes, their counts intact: no worker was replaced.
      assert TestPools.os_pids(ctx.pool) == pids
      assert Enum.all?(pids, &TestPools.os_alive?/1)
      assert TestPools.served(ctx.pool) == served + 2
    end

    test "bad calls are refused with validation errors, an unknown pool with a :pool error",
         ctx do
      assert {:error, %Error{category: :validation}} = Snakepit.execute(123, %{}, pool: ctx.pool)
      assert {:error, %Error{category: :validation}} = Snakepit.execute("echo", [1], pool: ctx.pool)
      assert {:error, %Error{category: :validation}} = exec(ctx, "echo", %{}, timeout: -1)
      assert {:error, %Error{category: :validation}} = exec(ctx, "echo", %{}, session_id: 5)
      assert {:error, %Error{category: :pool}} = Snakepit.execute("echo", %{}, pool: :no_such_pool)
    end

    test "execute!/3 returns the result or raises the error", ctx do
      assert Snakepit.execute!("add", %{a: 2, b: 2}, pool: ctx.pool) == 4

      assert_raise Error, ~r/^\[python_error\] ValueError: boom/, fn ->
        Snakepit.execute!("boom", %{}, pool: ctx.pool)
      end
    end
  end

  describe "timeouts" do
    test "a timeout is an error, the late result is dropped, and the pool keeps serving", ctx do
      before = Snakepit.get_stats(ctx.pool)
      served = TestPools.served(ctx.pool)
      {gate, release} = TestPools.gate()

      assert {:error, %Error{category: :timeout} = e} =
               exec(ctx, "block_until", %{path: gate}, timeout: 50)

      assert e.details.timeout == 50 and e.details.queue == false
      # Another call is served while the stuck one still runs.
      assert exec(ctx, "add", %{a: 1, b: 2}) == {:ok, 3}
      # block_until ignores the cancel: released, it returns its result,
      # which its worker sends (and the pool counts as served) but which
      # must never reach this process.
      release.()
      TestPools.wait_until(fn -> TestPools.served(ctx.pool) == served + 2 end)
      TestPools.refute_stray_answers()
      stats = Snakepit.get_stats(ctx.pool)
      assert stats.timeouts == before.timeouts + 1
      # The late answer is dropped, not counted as completed too.
      assert stats.completed == before.completed + 1
      assert stats.cancelled == before.cancelled
      assert stats.restarts == before.restarts
    end

    test "a call that times out while queued never reaches a worker" do
      # Both workers are busy; without pipelining this call waits in the
      # queue and gives up there.
      ctx = %{pool: TestPools.start_pool(size: 2, pipeline_depth: 1)}
      busy = TestPools.occupy(ctx.pool, 2)
      served = TestPools.served(ctx.pool)
      assert {:error, %Error{category: :timeout} = e} = exec(ctx, "count", %{}, timeout: 20)
      assert e.details.queue == true
      busy.release.()
      assert TestPools.await_occupied(busy) == [{:ok, "released"}, {:ok, "released"}]
      # Had the call still been queued, the first worker freed would have
      # taken it before answering its blocker's caller. Once no worker is
      # busy, they have answered the two blockers and nothing else.
      TestPools.wait_until(fn -> Snakepit.get_stats(ctx.pool).busy == 0 end)
      assert TestPools.served(ctx.pool) == served + 2
      assert exec(ctx, "echo", %{value: "after"}) == {:ok, "after"}
    end
  end

  test "many concurrent callers on a 2-worker pool each get their own answer", ctx do
    results =
      1..64
      |> Task.async_stream(
        fn i ->
          value = %{"caller" => i, "payload" => :binary.copy(<<i>>, i * 100)}
          {i, exec(ctx, "echo", %{value: value})}
        end,
        max_concurrency: 16,
        timeout: 30_000
      )
      |> Enum.map(fn {:ok, r} -> r end)

    for {i, result} <- results do
      assert {:ok, %{"caller" => ^i, "payload" => payload}} = result
      assert payload == :binary.copy(<<i>>, i * 100)
    end
  end

  describe "logging" do
    # Keeps the worker's lines off the console; the forwarder still gets them.
    @describetag :capture_log

    setup do
      id = Snakepit.TestLogForwarder.attach(self())
      on_exit(fn -> Snakepit.TestLogForwarder.detach(id) end)
    end

    test "print() inside a tool reaches Logger, tagged with the worker, not the protocol", ctx do
      before = Map.new(Snakepit.list_workers(ctx.pool), &{&1.worker_id, &1.requests})
      assert exec(ctx, "noisy", %{text: "hello from python"}) == {:ok, "hello from python"}
      # The worker that ran it is the one whose count went up.
      [id] =
        for %{worker_id: id, requests: n} <- Snakepit.list_workers(ctx.pool),
            n == before[id] + 1,
            do: id

      prefix = "[snakepit #{ctx.pool}/#{id}] "
      # Two routes, so in either order: print() becomes a log frame, a raw
      # write to fd 1 goes to stderr.
      for expected <- ["printed: hello from python", "raw fd 1 write"] do
        assert_receive {:log, :info, line}
                       when binary_part(line, 0, byte_size(prefix)) == prefix and
                              binary_part(line, byte_size(line), -byte_size(expected)) == expected,
                       5_000
      end
    end

    test "a correlation id reaches Logger metadata from print() and Python logging", ctx do
      opts = [pool: ctx.pool, correlation_id: "req-7"]
      assert {:ok, "hi"} = Snakepit.execute("noisy", %{text: "hi"}, opts)
      assert_receive {:log_meta, :info, line, %{correlation_id: "req-7"}}, 5_000
      assert line =~ "stdout: printed: hi"
      assert {:ok, true} = Snakepit.execute("log", %{level: "warning", message: "careful"}, opts)
      assert_receive {:log_meta, :warning, line, %{correlation_id: "req-7"}}, 5_000
      assert line =~ "snakepit_test: careful"

      assert {:ok, %{"ctx" => "req-7", "record" => "req-7"}} =
               Snakepit.execute("correlation", %{}, opts)

      assert {:error, e} = Snakepit.execute("boom", %{message: "x"}, opts)
      assert e.details.correlation_id == "req-7"
      assert {:error, e} = Snakepit.execute("nope", %{}, pool: ctx.pool)
      assert is_binary(e.details.correlation_id), "one is made when none is given"
    end

    test "Python logging reaches Logger at its level", ctx do
      assert exec(ctx, "log", %{level: "warning", message: "careful now"}) == {:ok, true}
      assert_log(:warning, &(&1 =~ "snakepit_test: careful now"))
    end
  end

  # Waits for a log event of `level` whose message satisfies `match?`.
  defp assert_log(level, match?) do
    receive do
      {:log, ^level, message} ->
        if match?.(message), do: :ok, else: assert_log(level, match?)
    after
      5_000 -> flunk("no matching #{level} log line within 5 s")
    end
  end

  test "built-in ping and describe", ctx do
    assert exec(ctx, "ping") == {:ok, "pong"}
    assert {:ok, %{"adapter" => adapter, "tools" => tools}} = exec(ctx, "describe")
    assert adapter == "snakepit_test_adapters.TestAdapter"
    assert tools["add"]["signature"] == "(a: Any, b: Any) -> Any"
    assert tools["sleep"]["parameters"] == ["ms", "started"]
  end

  test "stats and the worker list describe the pool", ctx do
    assert {:ok, _} = exec(ctx, "count")
    stats = Snakepit.get_stats(ctx.pool)
    assert stats.workers == 2
    assert stats.requests >= 1 and stats.completed >= 1
    workers = Snakepit.list_workers(ctx.pool)
    assert [%{worker_id: _, os_pid: pid, state: _, requests: _, age_ms: _} | _] = workers
    assert length(workers) == 2
    assert TestPools.os_alive?(pid)
  end
end
