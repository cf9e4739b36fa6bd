defmodule Snakepit.Native do
  @moduledoc false
  # The Rust NIF (native/snakepit_nif). Each function here is a stub replaced
  # when the library loads; its doc lives in native/snakepit_nif/src/lib.rs.
  #
  # Loading never fails the module: if the library is missing or stale, the
  # stubs raise an error that says why and how to fix it, instead of a bare
  # :nif_not_loaded.

  @on_load :load
  @abi_version 14
  @status_key {__MODULE__, :load_status}

  @doc false
  def load do
    path = :filename.join(:code.priv_dir(:snakepit), ~c"native/libsnakepit_nif")

    status =
      case :erlang.load_nif(path, 0) do
        :ok -> check_abi(path)
        {:error, {:reload, _}} -> :ok
        {:error, {reason, text}} -> {:error, load_failure(path, reason, text)}
      end

    :persistent_term.put(@status_key, status)
    :ok
  end

  defp check_abi(path) do
    case abi_version() do
      @abi_version ->
        :ok

      other ->
        {:error,
         "Snakepit's native library at #{path}.so is stale: it implements ABI #{other}, " <>
           "this code expects #{@abi_version}. Rebuild it with `mix compile --force` " <>
           "(or `mix deps.compile snakepit --force` in an app that depends on Snakepit)."}
    end
  end

  defp load_failure(path, reason, text) do
    hint =
      if reason == :load_failed and not File.exists?("#{path}.so") do
        "The library does not exist: it is built by `mix compile`, which needs cargo " <>
          "(Rust >= 1.91). Run `mix compile` (or `mix deps.compile snakepit` in an app " <>
          "that depends on Snakepit)."
      else
        "Rebuild it with `mix compile --force`."
      end

    "Snakepit's native library could not be loaded from #{path}.so (#{reason}: #{text}). " <>
      hint
  end

  @doc "Path of the shepherd executable that runs each worker (native/snakepit_shepherd)."
  @spec shepherd() :: String.t()
  def shepherd, do: Path.join(:code.priv_dir(:snakepit), "native/snakepit_shepherd")

  @doc "`:ok`, or `{:error, message}` saying why the NIF is not loaded and how to fix it."
  @spec status() :: :ok | {:error, String.t()}
  def status, do: :persistent_term.get(@status_key, {:error, "Snakepit.Native was never loaded"})

  # Stubs call :erlang.nif_error/1 directly: dialyzer knows such functions
  # are replaced at load time. The reason carries the explanation.
  defp why do
    case status() do
      {:error, message} -> {:snakepit_nif_not_loaded, message}
      :ok -> :snakepit_nif_not_loaded
    end
  end

  @doc false
  def abi_version, do: :erlang.nif_error(:not_loaded)

  def pool_new(_owner, _opts), do: :erlang.nif_error(why())
  def error_category(_kind), do: :erlang.nif_error(why())
  def pool_start_worker(_pool, _id, _program, _argv, _env, _cwd), do: :erlang.nif_error(why())
  def pool_maintain(_pool), do: :erlang.nif_error(why())
  def pool_close(_pool), do: :erlang.nif_error(why())
  def pool_terminate_all(_pool), do: :erlang.nif_error(why())
  def pool_kill_all(_pool), do: :erlang.nif_error(why())
  def pool_heartbeat(_pool, _max_missed), do: :erlang.nif_error(why())
  def pool_expire(_pool, _worker_id, _request_id), do: :erlang.nif_error(why())
  def pool_reclaim(_pool, _after_ms), do: :erlang.nif_error(why())
  def pool_stats(_pool), do: :erlang.nif_error(why())
  def pool_workers(_pool), do: :erlang.nif_error(why())

  def submit(_pool, _tag, _tool, _args, _session, _stream, _correlation_id),
    do: :erlang.nif_error(why())

  def submit_dirty(_pool, _tag, _tool, _args, _session, _stream, _correlation_id),
    do: :erlang.nif_error(why())

  def stream_ack(_pool, _request_id, _n), do: :erlang.nif_error(why())
  def stream_cancel(_pool, _request_id), do: :erlang.nif_error(why())
  def end_session(_pool, _session_id), do: :erlang.nif_error(why())
  def pool_sessions(_pool), do: :erlang.nif_error(why())
  def pool_session(_pool, _session_id), do: :erlang.nif_error(why())
  def cancel(_pool, _request_id), do: :erlang.nif_error(why())
  def dequeue(_pool, _request_id), do: :erlang.nif_error(why())
  def reap_orphans, do: :erlang.nif_error(why())
  def marked_processes(_mark), do: :erlang.nif_error(why())
  def owner_mark, do: :erlang.nif_error(why())
  def elixir_reply(_pool, _worker_id, _call_id, _reply), do: :erlang.nif_error(why())
  def elixir_reply_dirty(_pool, _worker_id, _call_id, _reply), do: :erlang.nif_error(why())
  def codec_roundtrip(_term), do: :erlang.nif_error(why())
  def decode(_binary, _offset), do: :erlang.nif_error(why())
  def decode_dirty(_binary, _offset), do: :erlang.nif_error(why())
  def decode_shm(_binary, _offset, _segments), do: :erlang.nif_error(why())
  def decode_shm_dirty(_binary, _offset, _segments), do: :erlang.nif_error(why())

  @doc false
  # Decodes the MessagePack item at `offset` of a frame the NIF sent us: on
  # this scheduler when that is cheap (small frames, or large ones made of a
  # few big binaries, which become sub-binaries), else on a dirty one. A
  # frame that came with shared-memory segments is `{:shm, frame, segments}`
  # (its handles become those binaries, which point into the mappings), or
  # `{:shm_refused, reason}` when they were over the pool's :shm_max_bytes.
  @spec decode_frame(binary() | tuple(), non_neg_integer()) ::
          {:ok, term()} | {:error, String.t()} | {:refused, tuple()}
  def decode_frame({:shm, frame, segments}, offset) do
    case decode_shm(frame, offset, segments) do
      :dirty -> decode_shm_dirty(frame, offset, segments)
      decoded -> decoded
    end
  end

  def decode_frame({:shm_refused, reason}, _offset), do: {:refused, reason}

  def decode_frame(frame, offset) do
    case decode(frame, offset) do
      :dirty -> decode_dirty(frame, offset)
      decoded -> decoded
    end
  end
end
