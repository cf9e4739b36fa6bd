defmodule Snakepit.Orphans do
  @moduledoc """
  Finds and kills worker processes left behind by a BEAM that died without
  cleaning up.

  Normally there are none: each worker runs under a shepherd process that
  kills it, and everything it started, as soon as the BEAM goes away, even by
  SIGKILL (see `Snakepit.Pool`). Leftovers need a rarer death, such as the
  shepherd being killed too (by the kernel's OOM killer, or by hand).

  So every process Snakepit starts carries a mark in its environment,
  `SNAKEPIT_OWNER=<BEAM os pid>.<its start time>`, which the worker's own
  children inherit. A marked process is an orphan when no process with that
  pid *and* that start time exists any more. Processes of a live BEAM,
  including other BEAMs on the same host, and processes without our mark are
  never touched.

  `Snakepit.Application` calls `reap/0` once when it starts.
  """

  alias Snakepit.Native

  @doc """
  SIGKILLs every marked process whose BEAM is gone, and returns their OS pids.

      Snakepit.Orphans.reap()
      #=> [48213, 48214]
  """
  @spec reap() :: [pos_integer()]
  def reap, do: Native.reap_orphans()

  @doc """
  This BEAM's mark: the value of `SNAKEPIT_OWNER` in the processes it starts.

      iex> Snakepit.Orphans.mark() =~ ~r/^\\d+\\.\\d+$/
      true
  """
  @spec mark() :: String.t()
  def mark, do: Native.owner_mark()

  @doc """
  The OS pids of the running processes that carry `mark` (by default this
  BEAM's): its shepherds, workers and whatever they started.

      iex> [%{os_pid: worker} | _] = Snakepit.list_workers()
      iex> worker in Snakepit.Orphans.processes()
      true
  """
  @spec processes(String.t()) :: [pos_integer()]
  def processes(mark \\ mark()), do: Native.marked_processes(mark)
end
