defmodule Snakepit.Adversarial.MalformedFramesTest do
  # A worker's control frames (log, ready, an error before ready) are
  # untrusted: one of the wrong shape is that worker breaking the protocol,
  # never a crash of the pool process. The worker is
  # test/support/hostile_worker.py, which misbehaves on demand.
  use ExUnit.Case, async: true
  @moduletag :capture_log
  import ExUnit.CaptureLog
  import Snakepit.TestPools

  alias Snakepit.Error

  defp start_hostile(extra \\ []) do
    opts = hostile_opts(extra)
    start_supervised!({Snakepit.Pool, opts})
    :ok = Snakepit.await_ready(opts[:name], 10_000)
    pool = opts[:name]
    pid = pool_pid(pool)
    {pool, pid, Process.monitor(pid)}
  end

  defp pool_pid(pool) do
    [{pid, _}] = Registry.lookup(Snakepit.Registry, pool)
    pid
  end

  # The pool process is the one that started, it answers, and it serves.
  defp assert_survived(pool, pid, ref) do
    assert :ok = Snakepit.await_ready(pool, 10_000)
    refute_received {:DOWN, ^ref, :process, _, _}
    assert pool_pid(pool) == pid
    assert Snakepit.execute("echo", %{value: "still here"}, pool: pool) == {:ok, "still here"}
  end

  # The native side may kill a worker that sends a malformed frame (its
  # running call gets a :transport error); if the frame reaches the pool
  # process instead, it logs a warning naming the worker and ignores it.
  defp assert_refused(answer, log) do
    case answer do
      {:ok, "sent"} ->
        assert log =~ ~r/worker \d+ .*sent a malformed log frame/

      {:error, %Error{category: :transport}} ->
        :ok

      other ->
        flunk("unexpected answer: #{inspect(other)}")
    end
  end

  for tool <- ~w(send_log_list send_log_int send_log_nil send_log_fields_wrong send_log_undecodable) do
    test "#{tool}: the pool process survives the frame and keeps serving" do
      {pool, pid, ref} = start_hostile()

      log =
        capture_log(fn ->
          answer = Snakepit.execute(unquote(tool), %{}, pool: pool)
          send(self(), {:answer, answer})
          assert_survived(pool, pid, ref)
        end)

      assert_received {:answer, answer}
      assert_refused(answer, log)
    end
  end

  test "a burst of malformed log frames: one warning each, the pool survives" do
    {pool, pid, ref} = start_hostile()

    log =
      capture_log(fn ->
        for tool <- ~w(send_log_list send_log_int send_log_fields_wrong) do
          answer = Snakepit.execute(tool, %{times: 100}, pool: pool)
          send(self(), {:answer, answer})
        end

        assert_survived(pool, pid, ref)
      end)

    answers = for _ <- 1..3, do: assert_received({:answer, answer}) && answer

    if Enum.all?(answers, &(&1 == {:ok, "sent"})) do
      assert length(Regex.scan(~r/sent a malformed log frame/, log)) == 300
    end
  end

  # What a worker of each HOSTILE_BEFORE_READY mode does before its handshake.
  @before_ready ~w(error_body_list error_body_int error_fields_wrong ready_body_int ready_body_list log_body_list)

  for mode <- @before_ready do
    test "a replacement worker that sends #{mode} before ready: the running pool survives" do
      armed = Path.join(tmp_dir("hostile_armed"), "armed")

      {pool, pid, ref} =
        start_hostile(
          env: %{"HOSTILE_BEFORE_READY" => unquote(mode), "HOSTILE_BEFORE_READY_ONCE" => armed}
        )

      File.write!(armed, "")

      capture_log(fn ->
        # The worker exits; its replacement misbehaves once (it removes the
        # file), and the one after it, if any, starts cleanly.
        assert {:error, %Error{category: :worker}} = Snakepit.execute("exit", %{}, pool: pool)
        wait_until(fn -> not File.exists?(armed) end)
        assert_survived(pool, pid, ref)
      end)
    end
  end

  for mode <- ~w(error_body_list error_body_int error_fields_wrong) do
    test "a first worker that sends #{mode}: the pool fails to start with a :pool error" do
      Process.flag(:trap_exit, true)
      opts = hostile_opts(env: %{"HOSTILE_BEFORE_READY" => unquote(mode)})

      assert {:error, %Error{category: :pool} = e} = Snakepit.Pool.start_link(opts)
      assert e.message =~ "pool #{inspect(opts[:name])} could not start"
      assert e.details.pool == opts[:name]

      # A body that is not a map is refused natively (the worker broke the
      # protocol); a map of wrong field types reaches the pool, which copes.
      if unquote(mode) != "error_fields_wrong",
        do: assert(e.message =~ "sent an error frame whose body is not a map")
    end
  end

  test "the hostile worker's handshake is checked like any other: another version is refused" do
    Process.flag(:trap_exit, true)
    opts = hostile_opts(env: %{"HOSTILE_PROTOCOL" => "4"}, max_start_failures: 1)
    assert {:error, %Error{category: :worker} = e} = Snakepit.Pool.start_link(opts)
    assert e.message =~ "speaks protocol version 4, this host speaks 3"
  end

  test "a first worker whose ready body is not a map: the pool fails to start with an error" do
    Process.flag(:trap_exit, true)

    for mode <- ~w(ready_body_int ready_body_list) do
      opts = hostile_opts(env: %{"HOSTILE_BEFORE_READY" => mode}, max_start_failures: 1)
      assert {:error, %Error{}} = Snakepit.Pool.start_link(opts)
    end
  end
end
