defmodule Snakepit.StreamsTest do
  # Streaming calls against real workers: order, laziness, cancellation,
  # backpressure, errors and timeouts.
  use ExUnit.Case, async: true
  import Snakepit.TestPools

  alias Snakepit.Error

  # The count of items the `infinite` tool yielded, written by its `finally`.
  defp await_marker(path) do
    wait_until(fn -> File.exists?(path) and File.read!(path) != "" end)
    path |> File.read!() |> String.to_integer()
  end

  defp marker_path, do: Path.join(tmp_dir("stream_marker"), "finally")

  test "100_000 small chunks arrive in order" do
    pool = start_pool(size: 1)
    Process.put(:next, 0)

    in_order = fn i ->
      expected = Process.get(:next)
      if i != expected, do: flunk("chunk #{i} came when #{expected} was due")
      Process.put(:next, i + 1)
    end

    assert :ok = Snakepit.execute_stream("count_up", %{n: 100_000}, in_order, pool: pool)
    assert Process.get(:next) == 100_000
    assert Snakepit.get_stats(pool).chunks == 100_000

    assert Snakepit.stream("count_up", %{n: 1_000}, pool: pool) |> Enum.to_list() ==
             Enum.to_list(0..999)
  end

  test "stream |> Enum.take(10) on an infinite generator: 10 items, its finally runs, the worker is free" do
    pool = start_pool(size: 1)
    marker = marker_path()
    lazy = Snakepit.stream("infinite", %{marker: marker}, pool: pool)
    assert Snakepit.get_stats(pool).requests == 0, "nothing runs until enumerated"

    assert Enum.take(lazy, 10) == Enum.to_list(0..9)
    assert await_marker(marker) >= 10
    assert {:ok, "free"} = Snakepit.execute("echo", %{value: "free"}, pool: pool, timeout: 2_000)
    refute_stray_answers()
    # Each enumeration is a new call.
    assert Enum.take(lazy, 2) == [0, 1]
  end

  test "a slow consumer of a fast infinite producer: the producer waits, memory stays flat" do
    pool = start_pool(size: 1)
    marker = marker_path()
    window = 8
    [%{os_pid: os_pid}] = Snakepit.list_workers(pool)
    rss = fn -> Enum.at(Snakepit.list_workers(pool), 0).rss_bytes end

    samples =
      Snakepit.stream("infinite", %{marker: marker, size: 10_000}, pool: pool, stream_window: window)
      |> Stream.with_index()
      |> Stream.map(fn {chunk, i} ->
        assert byte_size(chunk) == 10_000
        Process.sleep(10)
        {:message_queue_len, queued} = Process.info(self(), :message_queue_len)
        {i, queued, if(rem(i, 50) == 0, do: rss.())}
      end)
      |> Enum.take(200)

    assert Enum.all?(samples, fn {_, queued, _} -> queued <= window end),
           "the mailbox never held more than the window"

    [first | _] = rss_samples = for {_, _, r} <- samples, r != nil, do: r
    assert Enum.max(rss_samples) - first < 8 * 1024 * 1024, "worker RSS: #{inspect(rss_samples)}"
    yielded = await_marker(marker)
    assert yielded <= 200 + window + 1, "the producer ran ahead: #{yielded} items for 200 taken"
    # The generator writes the marker as it closes, a moment before the
    # worker's last frame frees it: the same worker, idle again.
    wait_until(fn ->
      match?([%{os_pid: ^os_pid, state: :idle}], Snakepit.list_workers(pool))
    end)
  end

  test "killing the consumer cancels the stream and frees the worker" do
    pool = start_pool(size: 1)
    marker = marker_path()
    test = self()

    consumer =
      spawn(fn ->
        Snakepit.stream("infinite", %{marker: marker}, pool: pool)
        |> Enum.each(fn i -> if i == 5, do: send(test, :streaming) end)
      end)

    assert_receive :streaming, 5_000
    Process.exit(consumer, :kill)
    assert await_marker(marker) >= 5
    assert {:ok, 1} = Snakepit.execute("echo", %{value: 1}, pool: pool, timeout: 2_000)
    assert Snakepit.get_stats(pool).cancelled == 1
  end

  test "an exception mid-stream comes after the chunks already sent" do
    pool = start_pool(size: 1)
    test = self()

    assert {:error, %Error{category: :python_error} = e} =
             Snakepit.execute_stream("fail_after", %{n: 3}, &send(test, {:item, &1}), pool: pool)

    assert e.message =~ "failed after 3"
    assert e.python_traceback =~ "ValueError"
    for i <- 0..2, do: assert_received({:item, ^i})

    assert_raise Error, ~r/failed after 2/, fn ->
      Snakepit.stream("fail_after", %{n: 2}, pool: pool) |> Enum.to_list()
    end

    assert {:ok, 1} = Snakepit.execute("echo", %{value: 1}, pool: pool)
  end

  test "async generators stream; plain tools stream one chunk; generators called plainly return a list" do
    pool = start_pool(size: 1)
    assert Snakepit.stream("async_count", %{n: 4}, pool: pool) |> Enum.to_list() == [0, 1, 2, 3]
    assert Snakepit.stream("echo", %{value: "one"}, pool: pool) |> Enum.to_list() == ["one"]
    assert {:ok, [0, 1, 2]} = Snakepit.execute("count_up", %{n: 3}, pool: pool)
  end

  @tag :capture_log
  test ":chunk_timeout bounds the wait for each chunk, :timeout the whole stream" do
    pool = start_pool(size: 2, cancel_grace: 5_000)
    marker = marker_path()

    assert {:error, %Error{category: :timeout} = e} =
             Snakepit.execute_stream("count_up", %{n: 3, delay: 1.0}, fn _ -> :ok end,
               pool: pool,
               chunk_timeout: 100
             )

    assert e.details.chunk == true

    started = System.monotonic_time(:millisecond)

    assert {:error, %Error{category: :timeout} = e} =
             Snakepit.execute_stream("infinite", %{marker: marker}, fn _ -> Process.sleep(1) end,
               pool: pool,
               timeout: 300
             )

    assert e.message =~ ":timeout"
    assert System.monotonic_time(:millisecond) - started < 2_000
    assert await_marker(marker) > 0
    refute_stray_answers()
  end

  test "a callback that raises cancels the stream and the exception goes on" do
    pool = start_pool(size: 1)
    marker = marker_path()

    assert_raise RuntimeError, "enough", fn ->
      Snakepit.execute_stream(
        "infinite",
        %{marker: marker},
        fn i -> if i == 3, do: raise("enough") end,
        pool: pool
      )
    end

    assert await_marker(marker) >= 4
    assert {:ok, 1} = Snakepit.execute("echo", %{value: 1}, pool: pool, timeout: 2_000)
    refute_stray_answers()
  end

  test "a stream in a session runs on the session's worker" do
    pool = start_pool(size: 3)
    s = Snakepit.new_session_id()
    {:ok, %{"pid" => pid}} = Snakepit.execute_in_session(s, "session_counter", %{}, pool: pool)
    test = self()

    assert :ok =
             Snakepit.execute_in_session_stream(s, "stream_pid", %{n: 5}, &send(test, {:pid, &1}),
               pool: pool
             )

    for _ <- 1..5, do: assert_received({:pid, ^pid})
  end

  test "64 KB chunks stream with a window of 1" do
    pool = start_pool(size: 1)

    chunks =
      Snakepit.stream("chunks", %{n: 50, size: 65_536}, pool: pool, stream_window: 1)
      |> Enum.to_list()

    assert length(chunks) == 50
    assert Enum.all?(chunks, &(byte_size(&1) == 65_536))
  end

  test "bad stream options are refused before anything is sent" do
    pool = start_pool(size: 1)

    for {opt, bad} <- [stream_window: 0, stream_window: 70_000, chunk_timeout: -1, timeout: :soon] do
      assert {:error, %Error{category: :validation, details: %{option: ^opt}}} =
               Snakepit.execute_stream("count_up", %{n: 1}, fn _ -> :ok end, [
                 {opt, bad},
                 pool: pool
               ])
    end

    assert_raise Error, ~r/no pool named/, fn ->
      Snakepit.stream("x", %{}, pool: :nope) |> Enum.to_list()
    end

    assert Snakepit.get_stats(pool).requests == 0
  end
end
