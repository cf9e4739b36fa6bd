defmodule Snakepit.SessionsTest do
  # Sessions against real workers: affinity, state in the worker, loss,
  # ending, expiry, limits.
  use ExUnit.Case, async: true
  import Snakepit.TestPools

  alias Snakepit.Error

  defp counter(pool, session, opts \\ []) do
    Snakepit.execute_in_session(session, "session_counter", %{}, [pool: pool] ++ opts)
  end

  # Starts a call of `session` blocked on a gate; returns once it runs.
  defp block_in_session(pool, session) do
    {gate, release} = gate()

    task =
      Task.async(fn ->
        Snakepit.execute_in_session(session, "block_until", %{path: gate}, pool: pool)
      end)

    wait_until(fn ->
      match?(
        {:ok, %{pending: 1, worker_id: w}} when w != nil,
        Snakepit.session_info(session, pool: pool)
      ) and Snakepit.get_stats(pool).in_flight == 1
    end)

    {task, release}
  end

  defp marker(dir, session),
    do: Path.join(dir, "session_end-" <> Base.encode16(session, case: :lower))

  test "a session's counter reaches 100 on one worker while other sessions and plain calls run" do
    pool = start_pool(size: 4)
    sessions = for i <- 1..4, do: "s#{i}-#{Snakepit.new_session_id()}"

    session_tasks =
      for s <- sessions do
        Task.async(fn -> for _ <- 1..100, do: counter(pool, s) end)
      end

    plain_tasks =
      for _ <- 1..2 do
        Task.async(fn -> for i <- 1..100, do: Snakepit.execute("echo", %{value: i}, pool: pool) end)
      end

    for results <- Task.await_many(session_tasks, 60_000) do
      ns = for {:ok, %{"n" => n}} <- results, do: n
      assert ns == Enum.to_list(1..100), "in order, state kept: #{inspect(Enum.take(results, 3))}"
      assert [_one_pid] = results |> Enum.map(fn {:ok, r} -> r["pid"] end) |> Enum.uniq()
      assert [{:ok, %{"new" => true}} | rest] = results
      assert Enum.all?(rest, &match?({:ok, %{"new" => false}}, &1))
    end

    for results <- Task.await_many(plain_tasks, 60_000) do
      assert results == for(i <- 1..100, do: {:ok, i})
    end

    stats = Snakepit.get_stats(pool)
    assert stats.sessions == 4
    assert_partition(stats)
  end

  test ":strict waits for its busy worker even when others are idle; calls run in order" do
    pool = start_pool(size: 2, pipeline_depth: 1)
    s = Snakepit.new_session_id()
    {:ok, %{"pid" => pid}} = counter(pool, s)
    {blocked, release} = block_in_session(pool, s)

    waiting = Task.async(fn -> counter(pool, s) end)

    assert {:ok, "x"} = Snakepit.execute("echo", %{value: "x"}, pool: pool),
           "the other worker is free"

    wait_until(fn -> Snakepit.get_stats(pool).queued == 1 end)
    refute Task.yield(waiting, 100), "a strict call waits for its own worker"

    release.()
    assert {:ok, "released"} = Task.await(blocked)
    assert {:ok, %{"n" => 2, "pid" => ^pid}} = Task.await(waiting)
  end

  test ":hint takes another idle worker when its own is busy; the tool sees a new session there" do
    pool = start_pool(size: 2)
    s = Snakepit.new_session_id()
    {:ok, %{"pid" => pid}} = counter(pool, s, affinity: :hint)
    {blocked, release} = block_in_session(pool, s)

    assert {:ok, %{"n" => 1, "new" => true, "pid" => other}} = counter(pool, s, affinity: :hint)
    assert other != pid
    release.()
    assert {:ok, "released"} = Task.await(blocked)

    assert {:ok, %{"n" => 2, "pid" => ^pid}} = counter(pool, s, affinity: :hint),
           "back home when idle"

    # The pool option is the default for calls that give none.
    pool2 = start_pool(size: 2, affinity: :hint)
    {:ok, _} = counter(pool2, s)
    {blocked, release} = block_in_session(pool2, s)
    assert {:ok, %{"new" => true}} = counter(pool2, s)
    release.()
    Task.await(blocked)
  end

  test ":fail_fast returns a :pool error at once while its worker is busy" do
    pool = start_pool(size: 2)
    s = Snakepit.new_session_id()
    {:ok, %{"pid" => pid}} = counter(pool, s)
    {blocked, release} = block_in_session(pool, s)

    assert {:error, %Error{category: :pool} = e} = counter(pool, s, affinity: :fail_fast)
    assert e.message =~ "is busy"
    assert e.details.session_id == s
    release.()
    Task.await(blocked)
    assert {:ok, %{"n" => 2, "pid" => ^pid}} = counter(pool, s, affinity: :fail_fast)
  end

  @tag :capture_log
  test "SIGKILL of a session's worker: its calls learn the session was lost, then it starts afresh" do
    pool = start_pool(size: 2, pipeline_depth: 1)
    s = Snakepit.new_session_id()
    {:ok, %{"pid" => pid}} = counter(pool, s)
    {blocked, _release} = block_in_session(pool, s)
    queued = Task.async(fn -> counter(pool, s) end)
    wait_until(fn -> Snakepit.get_stats(pool).queued == 1 end)

    System.cmd("kill", ["-9", "#{pid}"])

    assert {:error, %Error{category: :worker} = running} = Task.await(blocked)
    assert running.details.session_lost == true
    assert {:error, %Error{category: :worker} = waiting} = Task.await(queued)
    assert waiting.details.session_lost == true
    assert waiting.message =~ "was lost"
    assert {:ok, %{"n" => 1, "new" => true, "pid" => new_pid}} = counter(pool, s)
    assert new_pid != pid
    assert Snakepit.get_stats(pool).sessions_lost == 1
  end

  @tag :capture_log
  test "a session whose worker died between calls fails its next call once" do
    pool = start_pool(size: 2)
    s = Snakepit.new_session_id()
    {:ok, %{"pid" => pid}} = counter(pool, s)
    System.cmd("kill", ["-9", "#{pid}"])
    wait_until(fn -> match?({:ok, %{lost: true}}, Snakepit.session_info(s, pool: pool)) end)

    assert {:error, %Error{category: :worker, details: %{session_lost: true}}} = counter(pool, s)
    assert {:ok, %{"n" => 1, "new" => true}} = counter(pool, s)
  end

  test "end_session calls on_session_end and frees the state" do
    pool = start_pool(size: 1)
    dir = tmp_dir("session_end")
    s = Snakepit.new_session_id()
    opts = [pool: pool]

    {:ok, nil} =
      Snakepit.execute_in_session(s, "session_put", %{key: "marker_dir", value: dir}, opts)

    {:ok, nil} = Snakepit.execute_in_session(s, "session_put", %{key: "k", value: 1}, opts)

    assert :ok = Snakepit.end_session(s, opts)
    assert {:error, %Error{category: :validation}} = Snakepit.session_info(s, opts)
    assert {:ok, nil} = Snakepit.execute_in_session(s, "session_get", %{key: "k"}, opts)
    assert File.exists?(marker(dir, s)), "the worker ran the hook before the next call"
    assert :ok = Snakepit.end_session("never-seen", opts)
  end

  test "an idle session expires after :session_ttl and the hook runs" do
    pool = start_pool(size: 1, session_ttl: 200)
    dir = tmp_dir("session_ttl")
    s = Snakepit.new_session_id()

    {:ok, nil} =
      Snakepit.execute_in_session(s, "session_put", %{key: "marker_dir", value: dir}, pool: pool)

    wait_until(fn -> File.exists?(marker(dir, s)) end, 5_000)
    assert Snakepit.list_sessions(pool) == []
    assert Snakepit.get_stats(pool).sessions_expired == 1
  end

  test "past :max_sessions a new session gets a :pool error; known ones go on" do
    pool = start_pool(size: 1, max_sessions: 2)
    {:ok, _} = counter(pool, "a")
    {:ok, _} = counter(pool, "b")
    assert {:error, %Error{category: :pool} = e} = counter(pool, "c")
    assert e.details.max_sessions == 2
    assert {:ok, %{"n" => 2}} = counter(pool, "a")
    :ok = Snakepit.end_session("b", pool: pool)
    assert {:ok, %{"n" => 1}} = counter(pool, "c")
  end

  @tag :capture_log
  test ":max_requests waits for a worker's session up to twice the limit" do
    pool = start_pool(size: 1, max_requests: 3)
    s = Snakepit.new_session_id()
    results = for _ <- 1..6, do: counter(pool, s)
    assert Enum.map(results, fn {:ok, r} -> r["n"] end) == Enum.to_list(1..6)
    # The 6th answer reached 2 x max_requests: the worker is recycled.
    assert {:error, %Error{category: :worker, details: %{session_lost: true}}} = counter(pool, s)
    assert {:ok, %{"n" => 1}} = counter(pool, s)
  end

  test "list_sessions and session_info describe each session" do
    pool = start_pool(size: 1)
    {:ok, %{"pid" => pid}} = counter(pool, "b")
    {:ok, _} = counter(pool, "a")
    {:ok, _} = counter(pool, "a")

    assert [%{session_id: "a", calls: 2}, %{session_id: "b", calls: 1, os_pid: ^pid}] =
             Snakepit.list_sessions(pool)

    assert {:ok, %{pending: 0, lost: false, worker_id: w}} = Snakepit.session_info("a", pool: pool)
    assert is_integer(w)
    assert [%{sessions: 2}] = Snakepit.list_workers(pool)
  end

  test "bad session ids and affinities are refused before anything is sent" do
    pool = start_pool(size: 1)
    long = String.duplicate("x", 257)

    for bad <- ["", long, 42, :atom] do
      assert {:error, %Error{category: :validation, details: %{option: :session_id}}} =
               Snakepit.execute("ping", %{}, pool: pool, session_id: bad)
    end

    assert {:ok, _} =
             Snakepit.execute("session_counter", %{},
               pool: pool,
               session_id: String.duplicate("x", 256)
             )

    assert {:error, %Error{details: %{option: :affinity}}} =
             Snakepit.execute("ping", %{}, pool: pool, session_id: "s", affinity: :sticky)

    assert Snakepit.get_stats(pool).requests == 1
  end

  test "the design's SessionHelpers names work" do
    pool = start_pool(size: 1, name: :default_sessions_helpers)
    s = Snakepit.new_session_id()

    assert {:ok, %{"n" => 1}} =
             Snakepit.SessionHelpers.execute_with_session(s, "session_counter", %{}, pool: pool)

    assert {:ok, %{calls: 1}} = Snakepit.SessionHelpers.get_session_info(s, pool: pool)
    assert :ok = Snakepit.SessionHelpers.cleanup_session(s, pool: pool)
    assert Snakepit.list_sessions(pool) == []
  end
end
